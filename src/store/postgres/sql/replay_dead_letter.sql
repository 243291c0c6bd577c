-- Sends a dead letter again: back to the messages at its original position
-- with its attempts reset, ahead of any later message of its key, whose
-- block it lifts.
--
-- $1 id.
WITH d AS (DELETE FROM {dead_letters} WHERE id = $1 RETURNING *),
     u AS (DELETE FROM {blocked} b USING d
           WHERE b.partition_key = d.partition_key AND b.seq = d.seq)
INSERT INTO {messages} (seq, id, topic, partition_key, event_type,
                        schema_version, payload, content_type, headers,
                        created_at, attempts)
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, 0
FROM d
