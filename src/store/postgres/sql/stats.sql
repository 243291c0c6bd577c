-- What is known of the outbox apart from its messages (topic_stats.sql
-- counts those), by column: dead letters, dead tuples of the messages
-- table, age in seconds of the oldest transaction in this database that
-- holds back vacuum (this session's own excluded; transactions in other
-- databases do not hold back vacuum of this database's tables), whether
-- autovacuum runs on the messages table, the bytes the messages table
-- takes with its indexes and TOAST, and the last position assigned (the
-- sequence's high-water mark; NULL for a user that may not read the
-- sequence, so that a monitoring user with SELECT on the tables alone
-- still gets the rest). Run beside topic_stats.sql, as a statement of its
-- own: the two read the outbox a moment apart, which gauges can afford.
--
-- $1 the messages table's quoted name (cast to regclass).
SELECT (SELECT count(*) FROM {dead_letters}),
       (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = $1::regclass),
       (SELECT extract(epoch FROM now() - min(xact_start))::float8
          FROM pg_stat_activity
         WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()
           AND datname = current_database()),
       current_setting('autovacuum') = 'on' AND NOT EXISTS (
         SELECT 1 FROM pg_class c, unnest(c.reloptions) o
          WHERE c.oid = $1::regclass
            AND o IN ('autovacuum_enabled=false', 'autovacuum_enabled=off')),
       pg_total_relation_size($1::regclass),
       (SELECT CASE WHEN has_sequence_privilege(q.s, 'SELECT')
                    THEN pg_sequence_last_value(q.s) END
          FROM (SELECT pg_get_serial_sequence($1, 'seq')::regclass AS s) q);
