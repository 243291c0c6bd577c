-- Deletes one dead letter for good, returning what its key's block needs.
-- Of several dead letters of one id (a re-enqueued id), the oldest goes.
-- Binds: the message id.
DELETE FROM {dead_letters}
WHERE seq = (SELECT min(seq) FROM {dead_letters} WHERE id = ?)
RETURNING partition_key, seq;
