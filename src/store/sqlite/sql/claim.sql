-- The next messages due, by position, leaving out every message whose key
-- is blocked at an earlier position and the positions still in flight.
-- Binds, in order: now (microseconds); the positions in flight as a JSON
-- array; the limit.
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts
FROM {messages} m
WHERE (m.available_at IS NULL OR m.available_at <= ?)
  AND NOT EXISTS (SELECT 1 FROM {blocked} k
                  WHERE k.partition_key = m.partition_key AND k.seq < m.seq)
  AND m.seq NOT IN (SELECT value FROM json_each(?))
ORDER BY m.seq
LIMIT ?;
