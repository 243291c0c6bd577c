-- Copies messages that failed for good to the dead letters, with their
-- attempts and last error, keyed by position (see migration 1). The
-- messages are read by primary key over the list of positions.
-- Binds, in order: dead_at; [[seq, attempts, error], ...] as JSON; the
-- positions ({list}).
INSERT INTO {dead_letters} (seq, id, topic, partition_key, event_type,
                            schema_version, payload, content_type, headers,
                            created_at, attempts, last_error, dead_at)
SELECT m.seq, m.id, m.topic, m.partition_key, m.event_type, m.schema_version,
       m.payload, m.content_type, m.headers, m.created_at, u.attempts, u.err, ?
FROM {messages} m
JOIN JSON_TABLE(?, '$[*]' COLUMNS (seq      BIGINT   PATH '$[0]',
                                   attempts INT      PATH '$[1]',
                                   err      LONGTEXT PATH '$[2]')) u
  ON m.seq = u.seq
WHERE m.seq IN ({list});
