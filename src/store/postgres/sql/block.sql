-- Blocks keys behind their failing heads: later messages of a key are not
-- claimed while its block stands. A key keeps its earliest blocking head.
--
-- $1 keys (text[]), $2 the heads' positions (bigint[]).
INSERT INTO {blocked} (partition_key, seq)
SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (partition_key) DO UPDATE
SET seq = LEAST({blocked}.seq, excluded.seq)
