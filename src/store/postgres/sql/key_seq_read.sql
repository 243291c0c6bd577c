-- The last published per-key sequence number of each of the given keys
-- that has one: the greater of its row of key_sequences and its entries in
-- the log not folded yet. The log is joined by hash on the keys asked
-- for, so a read costs one pass over the log's few rows, whatever the
-- number of keys. A log entry without a number (a row whose arrays do
-- not pair up, which key_seq_fold.sql folds the same way) counts for none.
--
-- $1 keys (text[]).
SELECT k, max(n)
FROM (
    SELECT partition_key, last_sequence FROM {key_sequences}
    WHERE partition_key = ANY($1)
    UNION ALL
    SELECT u.k, u.n
    FROM {key_sequence_log} l
    CROSS JOIN LATERAL unnest(l.keys, l.numbers) u(k, n)
    JOIN unnest($1::text[]) w(k) ON w.k = u.k
    WHERE u.n IS NOT NULL
) s(k, n)
GROUP BY k
