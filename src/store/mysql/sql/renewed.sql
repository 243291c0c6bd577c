-- Of the given leases, those the relay holds at their epochs (after
-- renew.sql, whose row locks keep them so until the commit).
-- Binds, in order: each lease's bucket and epoch, pair by pair; the
-- relay's id.
SELECT bucket, epoch FROM {leases}
WHERE (bucket, epoch) IN ({pairs}) AND owner = ?;
