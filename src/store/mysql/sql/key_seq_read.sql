-- The last sequence number given out per partition key.
-- Binds: the keys ({list}).
SELECT partition_key, last_sequence
FROM {key_sequences}
WHERE partition_key IN ({list});
