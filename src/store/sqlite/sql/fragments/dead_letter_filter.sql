-- The conditions of a DeadLetterFilter on {dead_letters}, shared by the
-- listing and the replay so both pick the same dead letters. A NULL
-- parameter leaves its condition out.
--
-- Binds, in order: id, topic, partition key, text the last error contains,
-- dead at or after (microseconds), dead before (microseconds), positions
-- after this (the keyset cursor); the statement adds ORDER BY seq and
-- LIMIT ?8 (-1: no limit).
(?1 IS NULL OR id = ?1)
AND (?2 IS NULL OR topic = ?2)
AND (?3 IS NULL OR partition_key = ?3)
AND (?4 IS NULL OR instr(last_error, ?4) > 0)
AND (?5 IS NULL OR dead_at >= ?5)
AND (?6 IS NULL OR dead_at < ?6)
AND (?7 IS NULL OR seq > ?7)
