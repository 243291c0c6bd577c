-- Dead letters that match a filter (DeadLetterFilter), oldest position
-- first; a NULL parameter leaves its condition out. Columns as in
-- dead_letters.sql (decoded by index, see decode.rs).
--
-- $1 id, $2 topic, $3 partition key, $4 text the last error contains,
-- $5 dead at or after, $6 dead before, $7 positions after this (the keyset
-- cursor), $8 at most this many (NULL: no limit).
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts, last_error, dead_at,
       headers::text AS headers_text
FROM {dead_letters}
WHERE ($1::uuid IS NULL OR id = $1)
  AND ($2::text IS NULL OR topic = $2)
  AND ($3::text IS NULL OR partition_key = $3)
  AND ($4::text IS NULL OR strpos(last_error, $4) > 0)
  AND ($5::timestamptz IS NULL OR dead_at >= $5)
  AND ($6::timestamptz IS NULL OR dead_at < $6)
  AND ($7::bigint IS NULL OR seq > $7)
ORDER BY seq
LIMIT $8
