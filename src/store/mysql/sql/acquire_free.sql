-- The first step of taking leases: up to ? free or expired buckets,
-- lowest first, locked, skipping those another relay is taking now.
SELECT bucket FROM {leases}
WHERE expires_at < UTC_TIMESTAMP(6)
ORDER BY bucket
LIMIT ?
FOR UPDATE SKIP LOCKED;
