-- The keys whose parked messages no block holds any longer (an operator
-- lifted it, or the sweep of gone blocks did): one look per parked key
-- through messages_parked_idx (a loose index scan for the minimum), and a
-- key stays parked while a block stands before its earliest parked
-- message. unpark.sql then unparks them.
SELECT p.partition_key
FROM (SELECT partition_key, MIN(seq) AS first
      FROM {messages} FORCE INDEX (`{prefix}messages_parked_idx`)
      WHERE parked = TRUE
      GROUP BY partition_key) p
WHERE NOT EXISTS (SELECT 1 FROM {blocked} b
                  WHERE b.partition_key = p.partition_key AND b.seq < p.first);
