-- Unparks the messages of the given keys that no block holds any longer:
-- run in the acknowledgement's transaction that lifted the blocks, after
-- the lift. The claims' low-water mark comes down to them
-- (fragments/lower_floor.sql).
--
-- $1 keys (text[]).
WITH back AS (
         UPDATE {messages} m SET parked = false
         WHERE m.parked
           AND m.partition_key = ANY($1)
           AND NOT EXISTS (SELECT 1 FROM {blocked} k
                           WHERE k.partition_key = m.partition_key
                             AND k.seq < m.seq)
         RETURNING m.seq),
     {lower_floor}
SELECT count(*) FROM back
