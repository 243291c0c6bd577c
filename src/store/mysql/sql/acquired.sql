-- The leases acquire.sql took, with their new epochs.
-- Binds: the buckets as a JSON array.
SELECT l.bucket, l.epoch
FROM JSON_TABLE(?, '$[*]' COLUMNS (bucket INT PATH '$')) j
JOIN {leases} l ON l.bucket = j.bucket;
