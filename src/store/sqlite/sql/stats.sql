-- What is in the outbox: pending messages, the creation time of the
-- oldest (microseconds), the number of dead letters, messages whose retry is
-- not due, and messages due but held back behind a blocked key.
--
-- ?1 now (microseconds).
SELECT (SELECT count(*) FROM {messages}),
       (SELECT min(created_at) FROM {messages}),
       (SELECT count(*) FROM {dead_letters}),
       (SELECT count(*) FROM {messages} WHERE available_at > ?1),
       (SELECT count(*) FROM {messages} m
         WHERE (m.available_at IS NULL OR m.available_at <= ?1)
           AND EXISTS (SELECT 1 FROM {blocked} k
                        WHERE k.partition_key = m.partition_key AND k.seq < m.seq));
