-- Returns dead letters to the outbox at their original positions, with
-- their attempts reset, and returns the positions that went back. One whose
-- id is pending again writes nothing (ON CONFLICT on the id) and stays a
-- dead letter: a pending id never aborts a replay.
-- Binds: the positions (the oldest dead letter of each id) as a JSON array.
INSERT INTO {messages} (seq, id, topic, partition_key, event_type,
                        schema_version, payload, content_type, headers,
                        created_at, attempts)
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, 0
FROM {dead_letters}
WHERE seq IN (SELECT value FROM json_each(?))
ORDER BY seq
ON CONFLICT (id) DO NOTHING
RETURNING seq;
