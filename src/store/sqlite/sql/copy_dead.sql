-- Copies messages that failed for good to the dead letters, with their
-- attempts and last error. Dead letters are keyed by position, like key
-- blocks: a message whose id is already among the dead letters (a producer
-- enqueued it again) becomes a dead letter of its own and never replaces the
-- older one.
-- Binds, in order: dead_at (microseconds); [[seq, attempts, error], ...] as
-- JSON.
INSERT INTO {dead_letters} (seq, id, topic, partition_key, event_type,
                            schema_version, payload, content_type, headers,
                            created_at, attempts, last_error, dead_at)
SELECT m.seq, m.id, m.topic, m.partition_key, m.event_type, m.schema_version,
       m.payload, m.content_type, m.headers, m.created_at, u.attempts, u.err, ?
FROM {messages} m
JOIN (SELECT json_extract(value, '$[0]') AS seq,
             json_extract(value, '$[1]') AS attempts,
             json_extract(value, '$[2]') AS err
      FROM json_each(?)) u ON m.seq = u.seq;
