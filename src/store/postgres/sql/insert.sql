-- Writes one message, after taking the commit-order lock of its partition
-- key: a row lock on the key's slot in key_slots (65,536 rows), held until
-- the caller's transaction ends, so two transactions enqueueing for one key
-- commit in the order they enqueued. A row lock takes no entry in the
-- server's shared lock table, so a transaction may lock any number of
-- slots. A NULL $9 (lock off) or key takes no lock. MATERIALIZED and the
-- count over l make the lock come before the insert.
-- An id already present inserts nothing: the row count tells the caller.
--
-- With a channel ($10; only WakeUp::InTransaction passes one), it carries a
-- pg_notify in the caller's transaction: relays listening on the channel
-- are woken when it commits, and not at all if it rolls back. Without one,
-- n is empty and pg_notify is not called.
--
-- $1 id, $2 topic, $3 partition key, $4 event type, $5 schema version,
-- $6 payload, $7 content type, $8 headers (JSON text),
-- $9 any value to take the commit-order lock (NULL: no lock),
-- $10 notification channel (NULL: none).
-- x gives the transaction its id before the insert draws a position
-- (pg_current_xact_id, PostgreSQL 13 and later): a transaction that holds
-- a position not yet committed then has an older id than any transaction
-- given one after the draw, which the claims' low-water mark relies on
-- (floor_xid.sql, floor_advance.sql).
WITH l AS MATERIALIZED (
         SELECT 1 FROM {key_slots}
         WHERE slot = hashtext($3) & 65535 AND $9 IS NOT NULL
         FOR NO KEY UPDATE),
     n AS MATERIALIZED (SELECT pg_notify($10::text, '') WHERE $10::text IS NOT NULL),
     x AS MATERIALIZED (SELECT pg_current_xact_id())
INSERT INTO {messages} (id, topic, partition_key, event_type, schema_version,
                        payload, content_type, headers)
SELECT $1, $2, $3, $4, $5, $6, $7, $8::jsonb
WHERE (SELECT count(*) FROM l) + (SELECT count(*) FROM n) + (SELECT count(*) FROM x) >= 0
ON CONFLICT (id) DO NOTHING
