-- Extends the leases the relay still holds at their epochs, read by
-- primary key: only the relay's own rows are locked.
-- renewed.sql, in the same transaction, reads which.
-- Binds, in order: the time to live (microseconds); each lease's bucket
-- and epoch, pair by pair; the relay's id.
UPDATE {leases}
SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
WHERE (bucket, epoch) IN ({pairs}) AND owner = ?;
