-- Dead letters that match a filter (DeadLetterFilter), oldest position
-- first; a NULL parameter leaves its condition out.
-- Binds, in order: id, topic, partition key, text the last error contains,
-- dead at or after (microseconds), dead before (microseconds), positions
-- after this (the keyset cursor), at most this many (-1: no limit).
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts, last_error, dead_at
FROM {dead_letters}
WHERE (?1 IS NULL OR id = ?1)
  AND (?2 IS NULL OR topic = ?2)
  AND (?3 IS NULL OR partition_key = ?3)
  AND (?4 IS NULL OR instr(last_error, ?4) > 0)
  AND (?5 IS NULL OR dead_at >= ?5)
  AND (?6 IS NULL OR dead_at < ?6)
  AND (?7 IS NULL OR seq > ?7)
ORDER BY seq
LIMIT ?8;
