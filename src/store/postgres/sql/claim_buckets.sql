-- claim_all.sql restricted to the buckets the relay holds leases on.
--
-- $1 now, $2 bucket count, $3 limit, $4 positions in flight (bigint[]),
-- $5 the buckets to read (int[]).
SELECT m.seq, m.id, m.topic, m.partition_key, m.event_type, m.schema_version,
       m.payload, m.content_type, m.headers::text AS headers, m.created_at,
       m.attempts,
       CASE WHEN m.partition_key IS NULL THEN (m.seq % $2)::int
            ELSE (hashtext(m.partition_key) & 2147483647) % $2 END AS bucket
FROM {messages} m
WHERE (m.available_at IS NULL OR m.available_at <= $1)
  AND CASE WHEN m.partition_key IS NULL THEN (m.seq % $2)::int
           ELSE (hashtext(m.partition_key) & 2147483647) % $2 END = ANY($5)
  AND NOT EXISTS (SELECT 1 FROM {blocked} k
                  WHERE k.partition_key = m.partition_key AND k.seq < m.seq)
  AND NOT EXISTS (SELECT 1 FROM unnest($4::bigint[]) x(seq) WHERE x.seq = m.seq)
ORDER BY m.seq
LIMIT $3
