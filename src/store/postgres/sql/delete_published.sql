-- Deletes published messages (inside a fenced acknowledgement).
--
-- $1 positions (bigint[]).
DELETE FROM {messages} WHERE seq = ANY($1)
