-- Takes the buckets acquire_free.sql locked. The epoch, the fencing token,
-- grows with each change of hands.
-- Binds, in order: the buckets as a JSON array; the relay's id; the time
-- to live (microseconds).
UPDATE {leases} l FORCE INDEX (PRIMARY)
JOIN JSON_TABLE(?, '$[*]' COLUMNS (bucket INT PATH '$')) j ON l.bucket = j.bucket
SET l.owner = ?, l.epoch = l.epoch + 1,
    l.expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND;
