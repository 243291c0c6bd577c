-- The first step of a replay: the positions and ids of the dead letters
-- that match its filter, oldest first, locked until the replay commits.
-- Binds as dead_letters_matching.sql.
SELECT seq, id
FROM {dead_letters}
WHERE {dead_letter_filter}
ORDER BY seq
LIMIT ?
FOR UPDATE;
