-- Keeps published messages for the retention window, counting the attempt
-- that succeeded.
-- Binds, in order: published_at (microseconds); the positions as a JSON
-- array.
INSERT INTO {published} (seq, id, topic, partition_key, event_type,
                         schema_version, payload, content_type, headers,
                         created_at, attempts, published_at)
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts + 1, ?
FROM {messages}
WHERE seq IN (SELECT value FROM json_each(?));
