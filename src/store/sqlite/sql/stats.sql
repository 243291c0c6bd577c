-- What is in the outbox: pending messages, the creation time of the
-- oldest (microseconds), the number of dead letters, messages whose retry is
-- not due, and messages due but held back behind a blocked key. The
-- messages table is read once.
--
-- ?1 now (microseconds).
SELECT count(*),
       min(m.created_at),
       (SELECT count(*) FROM {dead_letters}),
       count(*) FILTER (WHERE m.available_at > ?1),
       count(*) FILTER (
           WHERE (m.available_at IS NULL OR m.available_at <= ?1)
             AND EXISTS (SELECT 1 FROM {blocked} k
                          WHERE k.partition_key = m.partition_key AND k.seq < m.seq))
FROM {messages} m;
