-- Reads the next messages of the given buckets (all if $5 is NULL), in
-- position order: due ones only, none behind a blocked key's failing head,
-- none still in flight, and no more than the byte budget holds. Each row
-- carries its bucket: the key's hash, or for a message without a key its
-- position, modulo the bucket count. Columns are decoded by index (see
-- decode.rs): the message columns with headers as text, the bucket, the
-- payload's size, the bytes of the rows before it, and whether the scan
-- read a row after it.
--
-- The read walks messages_ready_idx in position order, which leaves out
-- the messages parked behind blocked keys and those sleeping until a
-- retry (migration 6), from the low-water mark on (migration 8: below it
-- lie only rows deleted, which a held-back horizon keeps), and filters. Two
-- tests keep the order of a key whatever the parking's progress: the block
-- itself holds back what arrived behind it since the last parking, and a
-- parked message of the key holds back every later one (a block lifted
-- without its key unparked yet: until then the key waits). Both are
-- probes per row, through the blocks' primary key and messages_parked_idx,
-- in a CASE so they stay probes and run in this order: the block first,
-- the test that holds back the messages not parked yet behind a new block
-- (as anti-joins, the planner would scan every block or the whole parked
-- index for each row; as two filters, it would run the parked test first,
-- measured 8 us a row against under 1 us). Each probe runs only if there
-- is a block, or a parked message, at all (looked up once per claim), so
-- an outbox with nothing stuck pays no probe per row. A relay that holds
-- some of the 64 buckets reads only its own through messages_bucket_idx
-- (claim_buckets.sql); this statement serves a relay reading every bucket,
-- and one holding some under another bucket count (the bucket test then
-- filters each row).
--
-- The budget: `l` reads up to $3 rows; the running sum of their payload
-- sizes (octet_length reads a stored value's size without fetching it)
-- keeps the rows that start within $6 bytes, so a claim holds at most the
-- budget plus one message, and always at least one message. The rows kept
-- are a prefix of `l`, so `cut` on the last one tells whether the budget
-- left rows out. One window pass, streamed: a payload dropped here is
-- never fetched (large ones stay out of line until sent).
--
-- $1 now, $2 bucket count, $3 limit, $4 positions in flight (bigint[]),
-- $5 the buckets to read (int[]; NULL: every bucket), $6 the byte budget.
SELECT c.*
FROM (SELECT l.*,
             sum(l.size) OVER w - l.size AS bytes_before,
             lead(l.seq) OVER w IS NOT NULL AS followed
      FROM (SELECT m.seq, m.id, m.topic, m.partition_key, m.event_type,
                   m.schema_version, m.payload, m.content_type,
                   m.headers::text AS headers, m.created_at, m.attempts,
                   b.bucket, octet_length(m.payload) AS size
            FROM {messages} m
            CROSS JOIN LATERAL (
                SELECT CASE WHEN m.partition_key IS NULL THEN (m.seq % $2)::int
                            ELSE (hashtext(m.partition_key) & 2147483647) % $2
                       END AS bucket
            ) b
            WHERE NOT m.parked AND NOT m.sleeping
              AND m.seq >= COALESCE((SELECT f.seq FROM {ready_floor} f WHERE f.only_row), 0)
              AND (m.available_at IS NULL OR m.available_at <= $1)
              AND ($5::int[] IS NULL OR b.bucket = ANY($5))
              AND {not_held_back}
              AND NOT EXISTS (SELECT 1 FROM unnest($4::bigint[]) x(seq)
                              WHERE x.seq = m.seq)
            ORDER BY m.seq
            LIMIT $3) l
      WINDOW w AS (ORDER BY l.seq)) c
WHERE c.bytes_before < $6
ORDER BY c.seq
