-- Blocks keys behind a failed message, at the earliest blocked position of
-- each key.
-- Binds, in order: since (microseconds); [[key, seq], ...] as JSON.
INSERT INTO {blocked} (partition_key, seq, since)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?
FROM json_each(?)
-- `WHERE true` resolves the parser's ambiguity between a join's ON and the
-- upsert.
WHERE true
ON CONFLICT (partition_key) DO UPDATE
SET seq = min({blocked}.seq, excluded.seq);
