-- Dead letters, oldest first. Columns are decoded by index (see decode.rs):
-- the message columns, then last_error, dead_at and the headers as text.
--
-- $1 at most this many.
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts, last_error, dead_at,
       headers::text AS headers_text
FROM {dead_letters}
ORDER BY seq
LIMIT $1
