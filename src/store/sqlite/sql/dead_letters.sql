-- Dead letters, oldest first.
-- Binds: the limit.
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts, last_error, dead_at
FROM {dead_letters}
ORDER BY seq
LIMIT ?;
