-- Records the highest sequence number published per key; a key's number
-- never goes down.
-- Binds, in order: updated_at; [[key, number], ...] as JSON.
INSERT INTO {key_sequences} (partition_key, last_sequence, updated_at)
SELECT j.k, MAX(j.n), ?
FROM JSON_TABLE(?, '$[*]' COLUMNS (k VARBINARY(1024) PATH '$[0]', n BIGINT PATH '$[1]')) j
GROUP BY j.k
ON DUPLICATE KEY UPDATE
    last_sequence = GREATEST(last_sequence, VALUES(last_sequence)),
    updated_at = VALUES(updated_at);
