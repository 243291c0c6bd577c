-- Retained published messages, oldest first. Columns are decoded by index
-- (see decode.rs): the message columns, then the headers as text.
--
-- $1 at most this many.
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts,
       headers::text AS headers_text
FROM {published}
ORDER BY seq
LIMIT $1
