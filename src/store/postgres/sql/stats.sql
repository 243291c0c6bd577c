-- What is in the outbox, by column: pending messages, age of the oldest in
-- seconds, dead letters, dead tuples of the messages table, age in seconds
-- of the oldest transaction in this database that holds back vacuum (this
-- session's own excluded; transactions in other databases do not hold back
-- vacuum of this database's tables), whether autovacuum runs on the
-- messages table, messages whose retry is not due, messages due but held
-- back behind a blocked key, and the bytes the messages table takes with
-- its indexes and TOAST, and the last position assigned (the sequence's
-- high-water mark; NULL for a user that may not read the sequence, so that
-- a monitoring user with SELECT on the tables alone still gets the rest).
-- The messages table is read once, joined by hash to each blocked key's
-- first blocked position: a message is held back if it comes after it.
-- (A correlated lookup per message cost three times the scan, and its
-- estimated cost had PostgreSQL compile the plan with JIT: 0.9 s at a
-- million messages, 0.3 s of it JIT, against 0.25 s now; see *The
-- statistics pass* in docs/performance.md.)
--
-- $1 the messages table's quoted name (cast to regclass).
WITH m AS (
    SELECT count(*) AS pending,
           extract(epoch FROM now() - min(m.created_at))::float8 AS age,
           count(*) FILTER (WHERE m.available_at > now()) AS retry_waiting,
           count(*) FILTER (
               WHERE (m.available_at IS NULL OR m.available_at <= now())
                 AND k.seq < m.seq) AS parked
    FROM {messages} m
    LEFT JOIN (SELECT partition_key, min(seq) AS seq FROM {blocked}
                GROUP BY partition_key) k
           ON k.partition_key = m.partition_key)
SELECT m.pending,
       m.age,
       (SELECT count(*) FROM {dead_letters}),
       (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = $1::regclass),
       (SELECT extract(epoch FROM now() - min(xact_start))::float8
          FROM pg_stat_activity
         WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()
           AND datname = current_database()),
       current_setting('autovacuum') = 'on' AND NOT EXISTS (
         SELECT 1 FROM pg_class c, unnest(c.reloptions) o
          WHERE c.oid = $1::regclass
            AND o IN ('autovacuum_enabled=false', 'autovacuum_enabled=off')),
       m.retry_waiting,
       m.parked,
       pg_total_relation_size($1::regclass),
       (SELECT CASE WHEN has_sequence_privilege(q.s, 'SELECT')
                    THEN pg_sequence_last_value(q.s) END
          FROM (SELECT pg_get_serial_sequence($1, 'seq')::regclass AS s) q)
FROM m
