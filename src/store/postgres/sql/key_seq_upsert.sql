-- Records the last published per-key sequence number of each key (inside a
-- fenced acknowledgement); a number never goes back.
--
-- $1 keys (text[]), $2 sequence numbers (bigint[]).
INSERT INTO {key_sequences} (partition_key, last_sequence)
SELECT u.k, max(u.n) FROM unnest($1::text[], $2::bigint[]) u(k, n)
GROUP BY u.k
ON CONFLICT (partition_key) DO UPDATE
SET last_sequence = GREATEST({key_sequences}.last_sequence,
                             excluded.last_sequence),
    updated_at = now()
