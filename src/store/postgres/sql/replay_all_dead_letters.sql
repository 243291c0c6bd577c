-- replay_dead_letter.sql for every dead letter.
WITH d AS (DELETE FROM {dead_letters} RETURNING *),
     u AS (DELETE FROM {blocked} b USING d
           WHERE b.partition_key = d.partition_key AND b.seq = d.seq)
INSERT INTO {messages} (seq, id, topic, partition_key, event_type,
                        schema_version, payload, content_type, headers,
                        created_at, attempts)
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, 0
FROM d
