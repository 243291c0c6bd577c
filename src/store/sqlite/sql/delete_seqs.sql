-- Deletes messages by position (published, or moved to the dead letters).
-- Binds: the positions as a JSON array.
DELETE FROM {messages}
WHERE seq IN (SELECT value FROM json_each(?));
