-- The number of buckets (virtual partitions) the key space is hashed into.
SELECT count(*)::int FROM {leases}
