-- Deletes the dead letters that went back to the outbox.
-- Binds: their positions, as a JSON array.
DELETE d FROM {dead_letters} d
JOIN JSON_TABLE(?, '$[*]' COLUMNS (seq BIGINT PATH '$')) j ON d.seq = j.seq;
