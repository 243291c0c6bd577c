-- The last sequence number given out per partition key.
-- Binds: the keys as a JSON array.
SELECT partition_key, last_sequence
FROM {key_sequences}
WHERE partition_key IN (SELECT value FROM json_each(?));
