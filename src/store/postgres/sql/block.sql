-- Blocks keys behind their failing heads: later messages of a key are not
-- claimed while a block of it stands before them. Each head blocks its key
-- until it goes through, so a key may hold several blocks (an older dead
-- letter replayed while a newer one blocks the key).
--
-- $1 keys (text[]), $2 the heads' positions (bigint[]).
INSERT INTO {blocked} (partition_key, seq)
SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (partition_key, seq) DO NOTHING
