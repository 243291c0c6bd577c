-- Returns every dead letter to the outbox at its original position, with
-- its attempts reset.
INSERT INTO {messages} (seq, id, topic, partition_key, event_type,
                        schema_version, payload, content_type, headers,
                        created_at, attempts)
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, 0
FROM {dead_letters};
