-- The dead letter a discard of an id deletes: of several dead letters of
-- one id (a re-enqueued id), the oldest; locked until the discard commits.
-- Binds: the message id.
SELECT partition_key, seq FROM {dead_letters}
WHERE id = ?
ORDER BY seq
LIMIT 1
FOR UPDATE;
