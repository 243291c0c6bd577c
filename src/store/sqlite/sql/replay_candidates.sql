-- The first step of a replay: the positions and ids of the dead letters that
-- match its filter (fragments/dead_letter_filter.sql), oldest first.
-- Binds as dead_letters_matching.sql.
SELECT seq, id
FROM {dead_letters}
WHERE {dead_letter_filter}
ORDER BY seq
LIMIT ?8;
