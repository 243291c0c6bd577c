-- Dead letters that match a filter (fragments/dead_letter_filter.sql),
-- oldest position first.
-- Binds: the fourteen of the filter, then the limit.
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts, last_error, dead_at
FROM {dead_letters}
WHERE {dead_letter_filter}
ORDER BY seq
LIMIT ?;
