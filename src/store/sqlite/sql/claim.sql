-- The next messages due, by position, read through messages_ready_idx
-- (which leaves out the messages parked behind blocked keys and those
-- sleeping until a retry, migration 5),
-- leaving out every message whose key is blocked, or has a parked message,
-- at an earlier position (the PostgreSQL claim says why both), and the
-- positions still in flight, and
-- no more than the byte budget holds: `l` reads the positions and payload
-- sizes of up to the limit (length() of a blob reads its size, not its
-- content), `w` keeps their running sum, and only the rows that start
-- within the budget are read whole (so a claim holds at most the budget
-- plus one message, and always at least one). Each row also says whether
-- the scan read a row after it (on the last row kept: the budget cut).
-- Both reads of the messages name their index: with statistics (after
-- an ANALYZE) SQLite would rather walk every earlier position by rowid,
-- seconds per claim behind a hundred thousand parked messages.
-- Binds, in order: now (microseconds); the positions in flight as a JSON
-- array; the limit; the byte budget.
SELECT m.seq, m.id, m.topic, m.partition_key, m.event_type, m.schema_version,
       m.payload, m.content_type, m.headers, m.created_at, m.attempts, w.followed
FROM (SELECT l.seq,
             sum(l.size) OVER w - l.size AS bytes_before,
             lead(l.seq) OVER w IS NOT NULL AS followed
      FROM (SELECT m.seq, length(m.payload) AS size
            FROM {messages} m INDEXED BY "{prefix}messages_ready_idx"
            WHERE m.parked = 0 AND m.sleeping = 0
              AND (m.available_at IS NULL OR m.available_at <= ?)
              AND NOT EXISTS (SELECT 1 FROM {blocked} k
                              WHERE k.partition_key = m.partition_key
                                AND k.seq < m.seq)
              AND NOT EXISTS (SELECT 1
                              FROM {messages} p
                                   INDEXED BY "{prefix}messages_parked_idx"
                              WHERE p.parked = 1
                                AND p.partition_key = m.partition_key
                                AND p.seq < m.seq)
              AND m.seq NOT IN (SELECT value FROM json_each(?))
            ORDER BY m.seq
            LIMIT ?) l
      WINDOW w AS (ORDER BY l.seq)) w
JOIN {messages} m ON m.seq = w.seq
WHERE w.bytes_before < ?
ORDER BY w.seq;
