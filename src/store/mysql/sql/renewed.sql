-- Of the given leases, those the relay holds at their epochs (after
-- renew.sql, whose row locks keep them so until the commit).
-- Binds, in order: [[bucket, epoch], ...] as JSON; the relay's id.
SELECT l.bucket, l.epoch
FROM JSON_TABLE(?, '$[*]' COLUMNS (bucket INT PATH '$[0]', epoch BIGINT PATH '$[1]')) o
JOIN {leases} l ON l.bucket = o.bucket AND l.epoch = o.epoch
WHERE l.owner = ?;
