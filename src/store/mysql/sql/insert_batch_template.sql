-- Writes one chunk of messages in the order given; an id already present,
-- or repeated within the chunk, writes nothing (see insert.sql).
-- {rows} is replaced by one tuple of nine parameters per message, bound as
-- in insert.sql. Only the number of tuples is filled in, never a value.
INSERT IGNORE INTO {messages} (id, topic, partition_key, event_type, schema_version,
                               payload, content_type, headers, created_at)
VALUES {rows};
