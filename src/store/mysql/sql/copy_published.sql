-- Keeps published messages for the retention window, counting the attempt
-- that succeeded. A plain read at READ COMMITTED: nothing is locked.
-- Binds, in order: published_at; the positions ({list}).
INSERT INTO {published} (seq, id, topic, partition_key, event_type,
                         schema_version, payload, content_type, headers,
                         created_at, attempts, published_at)
SELECT m.seq, m.id, m.topic, m.partition_key, m.event_type, m.schema_version,
       m.payload, m.content_type, m.headers, m.created_at, m.attempts + 1, ?
FROM {messages} m
WHERE m.seq IN ({list});
