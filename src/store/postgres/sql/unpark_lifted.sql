-- Unparks every key whose parked messages no block holds any longer: keys
-- whose block an operator lifted (replay, discard, unblock), that the
-- sweep of gone blocks (sweep_gone_blocks.sql) freed, or that a parking
-- call raced with a lift (park.sql). One look per parked key, not per
-- parked message: the parked keys are walked through messages_parked_idx
-- one at a time, and a key stays parked while a block stands before its
-- earliest parked message (everything after it is behind that block too);
-- a key whose earliest parked message is free is unparked whole, and what
-- a later block of it still holds is parked again by the next pass.
-- The claims' low-water mark comes down to them
-- (fragments/lower_floor.sql). Returns how many messages it unparked.
WITH RECURSIVE k(key) AS (
         SELECT (SELECT m.partition_key FROM {messages} m
                 WHERE m.parked AND m.partition_key IS NOT NULL
                 ORDER BY m.partition_key LIMIT 1)
         UNION ALL
         SELECT (SELECT m.partition_key FROM {messages} m
                 WHERE m.parked AND m.partition_key > k.key
                 ORDER BY m.partition_key LIMIT 1)
         FROM k WHERE k.key IS NOT NULL),
     lifted AS (
         SELECT k.key FROM k
         WHERE k.key IS NOT NULL
           AND NOT EXISTS (
               SELECT 1 FROM {blocked} b
               WHERE b.partition_key = k.key
                 AND b.seq < (SELECT m.seq FROM {messages} m
                              WHERE m.parked AND m.partition_key = k.key
                              ORDER BY m.partition_key, m.seq LIMIT 1))),
     back AS (
         UPDATE {messages} m SET parked = false
         WHERE m.parked
           AND m.partition_key = ANY(ARRAY(SELECT key FROM lifted))
         RETURNING m.seq),
     {lower_floor}
SELECT count(*) FROM back
