-- The conditions of a DeadLetterFilter on {dead_letters}, shared by the
-- listing and the replay so both pick the same dead letters. A NULL
-- parameter leaves its condition out.
--
-- $1 id, $2 topic, $3 partition key, $4 text the last error contains,
-- $5 dead at or after, $6 dead before, $7 positions after this (the keyset
-- cursor); the statement adds ORDER BY seq and LIMIT $8.
($1::uuid IS NULL OR id = $1)
AND ($2::text IS NULL OR topic = $2)
AND ($3::text IS NULL OR partition_key = $3)
AND ($4::text IS NULL OR strpos(last_error, $4) > 0)
AND ($5::timestamptz IS NULL OR dead_at >= $5)
AND ($6::timestamptz IS NULL OR dead_at < $6)
AND ($7::bigint IS NULL OR seq > $7)
