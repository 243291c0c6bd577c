-- Lifts the blocks that replayed dead letters held on their keys.
-- Binds: the positions that went back, as a JSON array.
DELETE b FROM {blocked} b
JOIN {dead_letters} d ON d.partition_key = b.partition_key AND d.seq = b.seq
JOIN JSON_TABLE(?, '$[*]' COLUMNS (seq BIGINT PATH '$')) j ON j.seq = d.seq;
