-- Blocks keys behind failed messages; each failing head blocks its key
-- until it goes through, so a key may hold several blocks.
-- Binds, in order: since; [[key, seq], ...] as JSON.
INSERT IGNORE INTO {blocked} (partition_key, seq, since)
SELECT j.k, j.seq, ?
FROM JSON_TABLE(?, '$[*]' COLUMNS (k VARBINARY(1024) PATH '$[0]', seq BIGINT PATH '$[1]')) j;
