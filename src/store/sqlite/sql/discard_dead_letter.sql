-- Deletes one dead letter for good, returning what its key's block needs.
-- Binds: the message id.
DELETE FROM {dead_letters} WHERE id = ?
RETURNING partition_key, seq;
