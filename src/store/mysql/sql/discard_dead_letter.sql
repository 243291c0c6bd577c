-- Deletes one dead letter for good.
-- Binds: its position.
DELETE FROM {dead_letters} WHERE seq = ?;
