-- The number of buckets (one on SQLite).
SELECT count(*) FROM {leases};
