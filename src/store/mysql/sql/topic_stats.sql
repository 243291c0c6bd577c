-- The messages table counted by topic, in one scan: by column, the topic,
-- its pending messages, the creation time of its oldest, its messages
-- whose retry is not due, and those due but held back behind a blocked
-- key (parked, or after the key's blocked position); in topic order. The
-- outbox's `stats` sums the topics (the figures outside the table are
-- read apart, by stats.sql), `topic_stats` reads them as they are, and the
-- relay's stats pass reads both from this one scan.
-- Binds, in order: now, twice.
SELECT m.topic,
       COUNT(*) AS pending,
       MIN(m.created_at) AS oldest,
       CAST(COALESCE(SUM(m.available_at > ?), 0) AS SIGNED) AS waiting,
       CAST(COALESCE(SUM((m.available_at IS NULL OR m.available_at <= ?)
                         AND (m.parked OR EXISTS (SELECT 1 FROM {blocked} k
                                                  WHERE k.partition_key = m.partition_key
                                                    AND k.seq < m.seq))), 0) AS SIGNED) AS held
FROM {messages} m
GROUP BY m.topic
ORDER BY m.topic;
