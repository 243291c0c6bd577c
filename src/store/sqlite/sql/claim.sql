-- The next messages due, by position, leaving out every message whose key
-- is blocked at an earlier position and the positions still in flight, and
-- no more than the byte budget holds: `l` reads up to the limit, and the
-- running sum of their payload sizes keeps the rows that start within the
-- budget (so a claim holds at most the budget plus one message, and always
-- at least one). Each row also carries how many rows the scan read.
-- Binds, in order: now (microseconds); the positions in flight as a JSON
-- array; the limit; the byte budget.
SELECT *
FROM (SELECT l.*,
             sum(l.size) OVER (ORDER BY l.seq) - l.size AS bytes_before,
             count(*) OVER () AS read
      FROM (SELECT seq, id, topic, partition_key, event_type, schema_version,
                   payload, content_type, headers, created_at, attempts,
                   length(payload) AS size
            FROM {messages} m
            WHERE (m.available_at IS NULL OR m.available_at <= ?)
              AND NOT EXISTS (SELECT 1 FROM {blocked} k
                              WHERE k.partition_key = m.partition_key
                                AND k.seq < m.seq)
              AND m.seq NOT IN (SELECT value FROM json_each(?))
            ORDER BY m.seq
            LIMIT ?) l)
WHERE bytes_before < ?
ORDER BY seq;
