-- What is in the outbox: pending messages, the creation time of the
-- oldest (microseconds), the number of dead letters, messages whose retry is
-- not due, messages due but held back behind a blocked key, and the last
-- position assigned (AUTOINCREMENT's high-water mark). The messages table
-- is read once.
--
-- ?1 now (microseconds); ?2 the messages table's name.
SELECT count(*),
       min(m.created_at),
       (SELECT count(*) FROM {dead_letters}),
       count(*) FILTER (WHERE m.available_at > ?1),
       count(*) FILTER (
           WHERE (m.available_at IS NULL OR m.available_at <= ?1)
             AND EXISTS (SELECT 1 FROM {blocked} k
                          WHERE k.partition_key = m.partition_key AND k.seq < m.seq)),
       (SELECT seq FROM sqlite_sequence WHERE name = ?2)
FROM {messages} m;
