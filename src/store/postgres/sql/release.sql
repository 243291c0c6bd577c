-- Gives buckets back so another relay can take them at once; a lease whose
-- epoch moved on is left alone.
--
-- $1 relay id, $2 buckets (int[]), $3 their epochs (bigint[]).
UPDATE {leases} l
SET owner = NULL, expires_at = '-infinity'
FROM unnest($2::int[], $3::bigint[]) o(bucket, epoch)
WHERE l.bucket = o.bucket AND l.epoch = o.epoch AND l.owner = $1
