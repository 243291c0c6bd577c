-- insert.sql with a pg_notify in the caller's transaction: relays listening
-- on the channel are woken when it commits, and not at all if it rolls back.
--
-- $1 id, $2 topic, $3 partition key, $4 event type, $5 schema version,
-- $6 payload, $7 content type, $8 headers (JSON text),
-- $9 commit-order lock class (NULL: no lock), $10 notification channel.
WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock($9, hashtext($3))),
     n AS MATERIALIZED (SELECT pg_notify($10, ''))
INSERT INTO {messages} (id, topic, partition_key, event_type, schema_version,
                        payload, content_type, headers)
SELECT $1, $2, $3, $4, $5, $6, $7, $8::jsonb
FROM l CROSS JOIN n
ON CONFLICT (id) DO NOTHING
