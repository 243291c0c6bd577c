-- Takes up to a number of free or expired buckets, lowest first, skipping
-- those another relay is taking at this moment. The epoch, the fencing
-- token, grows with each change of hands.
--
-- $1 relay id, $2 time to live in seconds (float8), $3 at most this many.
UPDATE {leases} l
SET owner = $1, epoch = l.epoch + 1,
    expires_at = now() + make_interval(secs => $2)
WHERE l.expires_at < now()
  AND l.bucket IN (SELECT bucket FROM {leases} WHERE expires_at < now()
                   ORDER BY bucket LIMIT $3 FOR UPDATE SKIP LOCKED)
RETURNING l.bucket, l.epoch
