-- Moves published messages to the published table (inside a fenced
-- acknowledgement, for a relay that retains them), their attempts counting
-- this one.
--
-- $1 positions (bigint[]), $2 published_at.
WITH d AS (DELETE FROM {messages} WHERE seq = ANY($1) RETURNING *)
INSERT INTO {published} (seq, id, topic, partition_key, event_type,
                         schema_version, payload, content_type, headers,
                         created_at, attempts, published_at)
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts + 1, $2
FROM d
