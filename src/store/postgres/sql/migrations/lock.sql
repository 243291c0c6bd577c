-- Serializes the migrations of one set of tables (an outbox's or an
-- inbox's) across processes, until the migration's transaction ends.
--
-- $1 the lock class, derived from the name of the table of versions.
SELECT pg_advisory_xact_lock($1, 0)
