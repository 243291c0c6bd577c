-- Lifts the blocks that the given messages hold on their keys.
-- Binds: [[key, seq], ...] as JSON.
DELETE b FROM {blocked} b
JOIN JSON_TABLE(?, '$[*]' COLUMNS (k VARBINARY(1024) PATH '$[0]', seq BIGINT PATH '$[1]')) j
  ON b.partition_key = j.k AND b.seq = j.seq;
