-- Records the highest sequence number published per key; a key's number
-- never goes down.
-- Binds, in order: updated_at (microseconds); [[key, number], ...] as JSON.
INSERT INTO {key_sequences} (partition_key, last_sequence, updated_at)
SELECT json_extract(value, '$[0]'), max(json_extract(value, '$[1]')), ?
FROM json_each(?)
-- `WHERE true` resolves the parser's ambiguity between a join's ON and the
-- upsert.
WHERE true
GROUP BY 1
ON CONFLICT (partition_key) DO UPDATE
SET last_sequence = max({key_sequences}.last_sequence, excluded.last_sequence),
    updated_at = excluded.updated_at;
