-- Retained published messages, oldest first.
-- Binds: the limit.
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts
FROM {published}
ORDER BY seq
LIMIT ?;
