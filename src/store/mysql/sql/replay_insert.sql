-- Returns dead letters to the outbox at their original positions, with
-- their attempts reset. One whose id is pending again writes nothing
-- (IGNORE on the id) and stays a dead letter: replay_back.sql tells which
-- went back.
-- Binds: the positions (the oldest dead letter of each id, {list}).
INSERT IGNORE INTO {messages} (seq, id, topic, partition_key, event_type,
                               schema_version, payload, content_type, headers,
                               created_at, attempts)
SELECT d.seq, d.id, d.topic, d.partition_key, d.event_type, d.schema_version,
       d.payload, d.content_type, d.headers, d.created_at, 0
FROM {dead_letters} d
WHERE d.seq IN ({list})
ORDER BY d.seq;
