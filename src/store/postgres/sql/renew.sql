-- Extends the leases the relay still holds with the same epoch, counted
-- from the database's clock; returns those it extended.
--
-- $1 relay id, $2 time to live in seconds (float8), $3 buckets (int[]),
-- $4 their epochs (bigint[]).
UPDATE {leases} l
SET expires_at = now() + make_interval(secs => $2)
FROM unnest($3::int[], $4::bigint[]) o(bucket, epoch)
WHERE l.bucket = o.bucket AND l.epoch = o.epoch AND l.owner = $1
RETURNING l.bucket, l.epoch
