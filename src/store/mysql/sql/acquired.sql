-- The leases acquire.sql took, with their new epochs.
-- Binds: the buckets ({list}).
SELECT bucket, epoch FROM {leases} WHERE bucket IN ({list});
