-- Of the given positions, those pending again (after replay_insert.sql,
-- in its transaction: positions are never shared between a pending
-- message and a dead letter, so these are the ones that went back).
-- Binds: the positions as a JSON array.
SELECT m.seq
FROM JSON_TABLE(?, '$[*]' COLUMNS (seq BIGINT PATH '$')) j
JOIN {messages} m ON m.seq = j.seq
ORDER BY m.seq;
