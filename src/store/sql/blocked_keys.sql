-- Every blocked key with the position that blocks it, since when, and
-- where the message at that position is: 'retrying' (pending), 'dead', or
-- 'gone'. By key, then position (a key may hold several blocks). The time
-- is as the backend stores it (microseconds since the epoch on SQLite).
SELECT b.partition_key, b.seq, b.since,
       CASE WHEN EXISTS (SELECT 1 FROM {messages} m WHERE m.seq = b.seq)
            THEN 'retrying'
            WHEN EXISTS (SELECT 1 FROM {dead_letters} d WHERE d.seq = b.seq)
            THEN 'dead'
            ELSE 'gone' END AS at
FROM {blocked} b
ORDER BY b.partition_key, b.seq;
