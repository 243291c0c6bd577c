-- The number of buckets.
SELECT COUNT(*) FROM {leases};
