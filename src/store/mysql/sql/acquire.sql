-- Takes the buckets acquire_free.sql locked. The epoch, the fencing token,
-- grows with each change of hands.
-- Binds, in order: the relay's id; the time to live (microseconds); the
-- buckets ({list}).
UPDATE {leases}
SET owner = ?, epoch = epoch + 1,
    expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
WHERE bucket IN ({list});
