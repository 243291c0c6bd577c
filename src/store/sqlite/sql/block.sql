-- Blocks keys behind a failed message; each failing head blocks its key
-- until it goes through, so a key may hold several blocks.
-- Binds, in order: since (microseconds); [[key, seq], ...] as JSON.
INSERT INTO {blocked} (partition_key, seq, since)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?
FROM json_each(?)
-- `WHERE true` resolves the parser's ambiguity between a join's ON and the
-- upsert.
WHERE true
ON CONFLICT (partition_key, seq) DO NOTHING;
