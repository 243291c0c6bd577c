-- Deletes the dead letters that went back to the outbox.
-- Binds: their positions, as a JSON array.
DELETE FROM {dead_letters}
WHERE seq IN (SELECT value FROM json_each(?));
