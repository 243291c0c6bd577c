-- Deletes one dead letter (after replay_one_insert.sql copied it back).
-- Binds: the message id.
DELETE FROM {dead_letters} WHERE id = ?;
