-- Reads the next messages of every bucket, in position order: due ones only,
-- none behind a blocked key's failing head, none still in flight. Each row
-- carries its bucket: the key's hash, or for a message without a key its
-- position, modulo the bucket count. Columns are decoded by index (see
-- decode.rs): the message columns with headers as text, then the bucket.
--
-- $1 now, $2 bucket count, $3 limit, $4 positions in flight (bigint[]).
--
-- claim_buckets.sql is the same read restricted to some buckets.
SELECT m.seq, m.id, m.topic, m.partition_key, m.event_type, m.schema_version,
       m.payload, m.content_type, m.headers::text AS headers, m.created_at,
       m.attempts,
       CASE WHEN m.partition_key IS NULL THEN (m.seq % $2)::int
            ELSE (hashtext(m.partition_key) & 2147483647) % $2 END AS bucket
FROM {messages} m
WHERE (m.available_at IS NULL OR m.available_at <= $1)
  AND NOT EXISTS (SELECT 1 FROM {blocked} k
                  WHERE k.partition_key = m.partition_key AND k.seq < m.seq)
  AND NOT EXISTS (SELECT 1 FROM unnest($4::bigint[]) x(seq) WHERE x.seq = m.seq)
ORDER BY m.seq
LIMIT $3
