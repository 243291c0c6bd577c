-- Folds the oldest rows of the per-key sequence log into key_sequences:
-- one upsert per key, at its greatest number, however many rows held it;
-- a number never goes back. Rows are deleted and folded in one statement,
-- so a reader sees each number in one place or the other. Two folds at
-- once take disjoint rows without waiting for each other (the rows are
-- locked in id order, skipping those another fold holds), and each locks
-- its keys in key order, after reading all its rows. A row whose arrays
-- do not pair up (a key without a number or the other way round: written
-- by hand, or damaged) is folded for the pairs it holds, so it cannot stop
-- every later fold.
--
-- $1 most log rows to fold. Returns the rows folded.
WITH folded AS (
    DELETE FROM {key_sequence_log}
    WHERE id IN (SELECT id FROM {key_sequence_log} ORDER BY id LIMIT $1
                 FOR UPDATE SKIP LOCKED)
    RETURNING keys, numbers),
upserted AS (
    INSERT INTO {key_sequences} (partition_key, last_sequence)
    SELECT u.k, max(u.n)
    FROM folded f CROSS JOIN LATERAL unnest(f.keys, f.numbers) u(k, n)
    WHERE u.k IS NOT NULL AND u.n IS NOT NULL
    GROUP BY u.k
    ORDER BY u.k
    ON CONFLICT (partition_key) DO UPDATE
    SET last_sequence = GREATEST({key_sequences}.last_sequence,
                                 excluded.last_sequence),
        updated_at = now())
SELECT count(*) FROM folded
