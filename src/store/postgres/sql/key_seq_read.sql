-- The last published per-key sequence number of each of the given keys
-- that has one.
--
-- $1 keys (text[]).
SELECT partition_key, last_sequence FROM {key_sequences}
WHERE partition_key = ANY($1)
