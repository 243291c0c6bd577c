-- Dead letters that match a filter (DeadLetterFilter, conditions in
-- fragments/dead_letter_filter.sql), oldest position first. Columns are
-- decoded by index (see decode.rs): the message columns, then last_error,
-- dead_at and the headers as text.
--
-- $1..$7 the filter, $8 at most this many (NULL: no limit).
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts, last_error, dead_at,
       headers::text AS headers_text
FROM {dead_letters}
WHERE {dead_letter_filter}
ORDER BY seq
LIMIT $8
