-- Extends the leases the relay still holds at their epochs.
-- renewed.sql, in the same transaction, reads which.
-- Binds, in order: [[bucket, epoch], ...] as JSON; the time to live
-- (microseconds); the relay's id.
UPDATE {leases} l FORCE INDEX (PRIMARY)
JOIN JSON_TABLE(?, '$[*]' COLUMNS (bucket INT PATH '$[0]', epoch BIGINT PATH '$[1]')) o
  ON l.bucket = o.bucket AND l.epoch = o.epoch
SET l.expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
WHERE l.owner = ?;
