-- The messages table counted by topic, in one scan: by column, the topic,
-- its pending messages, the creation time of its oldest and that one's age
-- in seconds, its messages whose retry is not due, and those due but held
-- back behind a blocked key; in topic order. The relay's stats pass and
-- the outbox's `stats` sum the topics; `topic_stats` reads them as they
-- are. Each message is joined by hash to its key's first blocked position,
-- if the key is blocked: a message after it is held back. (A correlated
-- lookup per message cost three times the scan, and its estimated cost had
-- PostgreSQL compile the plan with JIT; see *The statistics pass* in
-- docs/performance.md.) Nothing here is parallel unsafe, so a large table
-- may be scanned by parallel workers; the figures outside the table are
-- read apart, by stats.sql (`pg_sequence_last_value` is parallel unsafe
-- and would keep the whole statement to one process: one statement for
-- both took 2 s at ten million messages, against 1.1 s for this one).
SELECT m.topic,
       count(*) AS pending,
       min(m.created_at) AS oldest,
       extract(epoch FROM now() - min(m.created_at))::float8 AS age,
       count(*) FILTER (WHERE m.available_at > now()) AS retry_waiting,
       count(*) FILTER (
           WHERE (m.available_at IS NULL OR m.available_at <= now())
             AND k.seq < m.seq) AS parked
FROM {messages} m
LEFT JOIN (SELECT partition_key, min(seq) AS seq FROM {blocked}
            GROUP BY partition_key) k
       ON k.partition_key = m.partition_key
GROUP BY m.topic
ORDER BY m.topic;
