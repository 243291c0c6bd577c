-- Unparks every key whose parked messages no block holds any longer: keys
-- whose block an operator lifted (replay, discard, unblock), or that the
-- sweep of gone blocks (sweep_gone_blocks.sql) freed. One look per parked
-- key, not per parked message: the parked keys are walked through
-- messages_parked_idx one at a time, and a key stays parked while a block
-- stands before its earliest parked message (everything after it is
-- behind that block too). Returns how many messages it unparked.
WITH RECURSIVE k(key) AS (
         SELECT min(partition_key) FROM {messages} WHERE parked
         UNION ALL
         SELECT (SELECT min(m.partition_key) FROM {messages} m
                 WHERE m.parked AND m.partition_key > k.key)
         FROM k WHERE k.key IS NOT NULL),
     lifted AS (
         SELECT k.key FROM k
         WHERE k.key IS NOT NULL
           AND NOT EXISTS (
               SELECT 1 FROM {blocked} b
               WHERE b.partition_key = k.key
                 AND b.seq < (SELECT min(m.seq) FROM {messages} m
                              WHERE m.parked AND m.partition_key = k.key))),
     u AS (
         UPDATE {messages} m SET parked = false
         FROM lifted WHERE m.parked AND m.partition_key = lifted.key
         RETURNING 1)
SELECT count(*) FROM u
