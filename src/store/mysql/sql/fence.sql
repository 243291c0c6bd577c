-- The first statement of an acknowledgement: the relay's leases, read by
-- primary key and locked in share mode until the acknowledgement commits,
-- so none of its buckets changes hands before then (and no other relay's
-- lease row is touched); the caller keeps the buckets whose epoch is still
-- the one it claimed under.
-- Binds, in order: the buckets the relay believes it holds ({list}); the
-- relay's id.
SELECT bucket, epoch FROM {leases}
WHERE bucket IN ({list}) AND owner = ?
LOCK IN SHARE MODE;
