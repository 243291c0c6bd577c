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
-- The positions in flight (the one or two batches claimed before, not
-- acknowledged yet) are left out by range, never read: the scan is three
-- scans merged in position order, of the positions before the first one
-- in flight, of the gaps between positions in flight ($7 and $8, the
-- first and last position of each gap, in order), and of those after the
-- last one. Their union is every position from the low-water mark on but
-- those in flight, so a message that committed late inside the span in
-- flight (a gap) is read like any other. Batches in flight are mostly
-- runs of consecutive positions, so there are few gaps, each read through
-- the index by its range, the gap as the outer side of a nested loop
-- (OFFSET 0 keeps the subquery from being flattened into a join that
-- would walk the whole index against the gaps); the rows found in the
-- gaps, at most the span's, are sorted before the merge. Measured at
-- 1.0 ms a claim of 1,000 beside 2,000 positions in flight, against 1.7
-- ms when each was read and dropped by an anti join; a span of many gaps
-- costs a descent each (2,000 gaps: about 4 ms). A relay holding some of
-- the 64 buckets uses claim_buckets.sql; this statement serves it only
-- under another bucket count, where its positions in flight lie among
-- other relays' and leave a gap each. Nothing in flight: $4 is i64's
-- largest value and $9 the one below it.
--
-- $1 now, $2 bucket count, $3 limit, $4 the first position in flight,
-- $5 the buckets to read (int[]; NULL: every bucket), $6 the byte budget,
-- $7 and $8 the first and last positions of the gaps between positions in
-- flight (bigint[]), $9 the last position in flight.
WITH g AS MATERIALIZED (
    SELECT COALESCE((SELECT f.seq FROM {ready_floor} f WHERE f.only_row), 0) AS floor)
SELECT c.*
FROM (SELECT l.*,
             sum(l.size) OVER w - l.size AS bytes_before,
             lead(l.seq) OVER w IS NOT NULL AS followed
      FROM (SELECT m.seq, m.id, m.topic, m.partition_key, m.event_type,
                   m.schema_version, m.payload, m.content_type,
                   m.headers::text AS headers, m.created_at, m.attempts,
                   b.bucket, octet_length(m.payload) AS size
            FROM ((SELECT m.* FROM {messages} m
                   WHERE NOT m.parked AND NOT m.sleeping
                     AND m.seq >= (SELECT g.floor FROM g) AND m.seq < $4
                   ORDER BY m.seq)
                  UNION ALL
                  (SELECT m.* FROM unnest($7::bigint[], $8::bigint[]) h(first, last)
                   CROSS JOIN LATERAL (
                       SELECT m.* FROM {messages} m
                       WHERE NOT m.parked AND NOT m.sleeping
                         AND m.seq BETWEEN h.first AND h.last
                         AND m.seq >= (SELECT g.floor FROM g)
                       OFFSET 0) m
                   ORDER BY m.seq)
                  UNION ALL
                  (SELECT m.* FROM {messages} m
                   WHERE NOT m.parked AND NOT m.sleeping
                     AND m.seq >= (SELECT g.floor FROM g) AND m.seq > $9
                   ORDER BY m.seq)) m
            CROSS JOIN LATERAL (
                SELECT CASE WHEN m.partition_key IS NULL THEN (m.seq % $2)::int
                            ELSE (hashtext(m.partition_key) & 2147483647) % $2
                       END AS bucket
            ) b
            WHERE (m.available_at IS NULL OR m.available_at <= $1)
              AND ($5::int[] IS NULL OR b.bucket = ANY($5))
              AND {not_held_back}
            ORDER BY m.seq
            LIMIT $3) l
      WINDOW w AS (ORDER BY l.seq)) c
WHERE c.bytes_before < $6
ORDER BY c.seq
