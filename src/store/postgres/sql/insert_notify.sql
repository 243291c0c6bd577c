-- insert.sql with a pg_notify in the caller's transaction: relays listening
-- on the channel are woken when it commits, and not at all if it rolls back.
--
-- $1 id, $2 topic, $3 partition key, $4 event type, $5 schema version,
-- $6 payload, $7 content type, $8 headers (JSON text),
-- $9 any value to take the commit-order lock (NULL: no lock), $10
-- notification channel.
WITH l AS MATERIALIZED (
         SELECT 1 FROM {key_slots}
         WHERE slot = hashtext($3) & 65535 AND $9 IS NOT NULL
         FOR NO KEY UPDATE),
     n AS MATERIALIZED (SELECT pg_notify($10, ''))
INSERT INTO {messages} (id, topic, partition_key, event_type, schema_version,
                        payload, content_type, headers)
SELECT $1, $2, $3, $4, $5, $6, $7, $8::jsonb
FROM n
WHERE (SELECT count(*) FROM l) >= 0
ON CONFLICT (id) DO NOTHING
