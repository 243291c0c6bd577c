-- Serializes migrations of one outbox across processes, until the
-- migration's transaction ends.
--
-- $1 the outbox's migration lock class.
SELECT pg_advisory_xact_lock($1, 0)
