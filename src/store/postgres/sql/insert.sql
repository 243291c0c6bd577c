-- Writes one message, after taking the commit-order lock of its partition
-- key: transaction-scoped, so it is held until the caller's transaction
-- ends, and two transactions enqueueing for one key commit in the order
-- they enqueued. A NULL class or key takes no lock (pg_advisory_xact_lock is
-- strict). MATERIALIZED and `FROM l` make the lock come before the insert.
-- An id already present inserts nothing: the row count tells the caller.
--
-- $1 id, $2 topic, $3 partition key, $4 event type, $5 schema version,
-- $6 payload, $7 content type, $8 headers (JSON text),
-- $9 commit-order lock class (NULL: no lock).
--
-- insert_notify.sql is the same write carrying a pg_notify.
WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock($9, hashtext($3)))
INSERT INTO {messages} (id, topic, partition_key, event_type, schema_version,
                        payload, content_type, headers)
SELECT $1, $2, $3, $4, $5, $6, $7, $8::jsonb
FROM l
ON CONFLICT (id) DO NOTHING
