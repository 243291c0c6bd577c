-- Writes one chunk of messages in the order given and returns the ids it
-- inserted; an id already present, or repeated within the chunk, writes
-- nothing.
-- {rows} is replaced by one tuple of nine parameters per message, bound as in
-- insert.sql. Only the number of tuples is filled in, never a value.
INSERT INTO {messages} (id, topic, partition_key, event_type, schema_version,
                        payload, content_type, headers, created_at)
VALUES {rows}
ON CONFLICT (id) DO NOTHING
RETURNING id;
