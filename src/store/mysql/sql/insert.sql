-- Writes one message. An id already in the outbox writes nothing (IGNORE:
-- every value is checked before it is sent, so the only error it can
-- swallow is the duplicate id), which the row count tells the caller.
-- Binds, in order: id, topic, partition_key, event_type, schema_version,
-- payload, content_type, headers, created_at.
INSERT IGNORE INTO {messages} (id, topic, partition_key, event_type, schema_version,
                               payload, content_type, headers, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?);
