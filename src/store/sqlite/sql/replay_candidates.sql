-- The first step of a replay: the positions and ids of the dead letters that
-- match its filter, oldest first (the filter as in dead_letters_matching.sql).
-- Binds as dead_letters_matching.sql.
SELECT seq, id
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
