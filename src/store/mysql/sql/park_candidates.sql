-- The first step of parking: up to ? ready messages held behind a blocked
-- key, oldest first, read without locking. park.sql then parks those
-- still ready; a block lifted in between leaves parked messages with no
-- block, which keep their key's order (the claim holds back what follows
-- a parked message) until the next pass's unpark_lifted.sql.
-- Binds: the most messages to park.
SELECT m.seq
FROM {messages} m FORCE INDEX (`{prefix}messages_ready_idx`)
WHERE m.parked = FALSE AND m.sleeping = FALSE
  AND m.seq > (SELECT MIN(seq) FROM {blocked})
  AND EXISTS (SELECT 1 FROM {blocked} b
              WHERE b.partition_key = m.partition_key AND b.seq < m.seq)
ORDER BY m.seq
LIMIT ?;
