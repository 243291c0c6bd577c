-- The first statement of an acknowledgement: the relay's leases, locked
-- in share mode until the acknowledgement commits, so no bucket of the
-- relay changes hands before then; the caller keeps the buckets whose
-- epoch is still the one it claimed under.
-- Binds: the relay's id.
SELECT bucket, epoch FROM {leases} WHERE owner = ? LOCK IN SHARE MODE;
