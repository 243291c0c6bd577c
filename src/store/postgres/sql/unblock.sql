-- Lifts the block of each key whose blocking head went through; a block set
-- since by another head of the key stays.
--
-- $1 keys (text[]), $2 the heads' positions (bigint[]).
DELETE FROM {blocked} b
USING unnest($1::text[], $2::bigint[]) u(k, seq)
WHERE b.partition_key = u.k AND b.seq = u.seq
