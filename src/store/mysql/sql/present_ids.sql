-- Of the given ids, those present in the outbox at the given positions or
-- later: after a batch insert, the ids it wrote (positions come from the
-- insert's own counter, so an older message of a repeated id is earlier).
-- Binds, in order: the ids as a JSON array of hex strings, the first
-- position the insert gave.
SELECT m.id
FROM JSON_TABLE(?, '$[*]' COLUMNS (hex CHAR(32) PATH '$')) j
JOIN {messages} m ON m.id = UNHEX(j.hex)
WHERE m.seq >= ?;
