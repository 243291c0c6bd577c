-- Writes one message. An id already in the outbox writes nothing and
-- returns no row, which the caller reports as a duplicate.
-- Binds, in order: id, topic, partition_key, event_type, schema_version,
-- payload, content_type, headers, created_at (microseconds).
INSERT INTO {messages} (id, topic, partition_key, event_type, schema_version,
                        payload, content_type, headers, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING
RETURNING seq;
