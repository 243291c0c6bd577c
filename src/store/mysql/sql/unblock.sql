-- Lifts the blocks of the given (key, position) pairs, read by primary key
-- as ranges (see delete_seqs.sql).
-- Binds: each block's key and position, pair by pair.
DELETE FROM {blocked} WHERE (partition_key, seq) IN ({pairs});
