-- What is in the outbox: pending messages, the creation time of the
-- oldest, the number of dead letters, messages whose retry is not due,
-- and messages due but held back behind a blocked key. The messages table
-- is read once.
-- Binds: now, twice.
SELECT COUNT(*) AS pending,
       MIN(m.created_at) AS oldest,
       (SELECT COUNT(*) FROM {dead_letters}) AS dead,
       CAST(COALESCE(SUM(m.available_at > ?), 0) AS SIGNED) AS waiting,
       CAST(COALESCE(SUM((m.available_at IS NULL OR m.available_at <= ?)
                         AND (m.parked OR EXISTS (SELECT 1 FROM {blocked} k
                                                  WHERE k.partition_key = m.partition_key
                                                    AND k.seq < m.seq))), 0) AS SIGNED) AS held
FROM {messages} m;
