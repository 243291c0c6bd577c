-- Unparks every key whose parked messages no block holds any longer (an
-- operator lifted it, or the sweep of gone blocks did): one look per
-- parked key through messages_parked_idx, and a key stays parked while a
-- block stands before its earliest parked message. Each read names the
-- index (see claim.sql).
WITH RECURSIVE k(key) AS (
    SELECT min(partition_key)
    FROM {messages} INDEXED BY "{prefix}messages_parked_idx" WHERE parked = 1
    UNION ALL
    SELECT (SELECT min(m.partition_key)
            FROM {messages} m INDEXED BY "{prefix}messages_parked_idx"
            WHERE m.parked = 1 AND m.partition_key > k.key)
    FROM k WHERE k.key IS NOT NULL)
UPDATE {messages} INDEXED BY "{prefix}messages_parked_idx" SET parked = 0
WHERE parked = 1
  AND partition_key IN (
      SELECT k.key FROM k
      WHERE k.key IS NOT NULL
        AND NOT EXISTS (
            SELECT 1 FROM {blocked} b
            WHERE b.partition_key = k.key
              AND b.seq < (SELECT min(m.seq)
                           FROM {messages} m
                                INDEXED BY "{prefix}messages_parked_idx"
                           WHERE m.parked = 1 AND m.partition_key = k.key)));
