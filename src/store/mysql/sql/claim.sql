-- The next messages due in the given buckets, by position, read through
-- messages_ready_idx at (parked, sleeping) = (false, false) in position
-- order, so MySQL needs no sort (a sort would read every ready row), and
-- locking nothing: a plain read sees committed rows only, and leases say
-- which relay owns a bucket. Left out: messages of another bucket (the
-- bucket is the key's CRC-32, or for a message without a key its
-- position, modulo the bucket count; the relay's buckets come as a
-- 64-bit mask), messages whose key is blocked at an earlier position,
-- or has a parked message at an earlier position (the PostgreSQL claim
-- says why both), and positions still in flight.
--
-- The byte budget as on the other backends: `l` reads positions and
-- payload sizes up to the limit, `w` keeps their running sum, and only
-- rows that start within the budget are read whole. Each row says whether
-- the scan read a row after it.
-- Binds, in order: the bucket count twice; now; the positions in flight
-- ({list}, at least one: -1 stands for none); the buckets' mask; the
-- limit; the byte budget.
SELECT m.seq, m.id, m.topic, m.partition_key, m.event_type, m.schema_version,
       m.payload, m.content_type, m.headers, m.created_at, m.attempts,
       w.bucket, w.followed
FROM (SELECT l.seq, l.bucket,
             SUM(l.size) OVER w - l.size AS bytes_before,
             CAST(LEAD(l.seq) OVER w IS NOT NULL AS SIGNED) AS followed
      FROM (SELECT m.seq, OCTET_LENGTH(m.payload) AS size,
                   CAST(CASE WHEN m.partition_key IS NULL THEN m.seq % ?
                             ELSE CRC32(m.partition_key) % ? END AS SIGNED) AS bucket
            FROM {messages} m FORCE INDEX (`{prefix}messages_ready_idx`)
            WHERE m.parked = FALSE AND m.sleeping = FALSE
              AND (m.available_at IS NULL OR m.available_at <= ?)
              AND NOT EXISTS (SELECT 1 FROM {blocked} k
                              WHERE k.partition_key = m.partition_key
                                AND k.seq < m.seq)
              AND NOT EXISTS (SELECT 1
                              FROM {messages} p FORCE INDEX (`{prefix}messages_parked_idx`)
                              WHERE p.parked = TRUE
                                AND p.partition_key = m.partition_key
                                AND p.seq < m.seq)
              AND m.seq NOT IN ({list})
            HAVING (? >> bucket) & 1 = 1
            ORDER BY m.seq
            LIMIT ?) l
      WINDOW w AS (ORDER BY l.seq)) w
JOIN {messages} m ON m.seq = w.seq
WHERE w.bytes_before < ?
ORDER BY w.seq;
