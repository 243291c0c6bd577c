-- Retained published messages published at or after a time, in the order
-- they were published (what `outbox tail` follows), read through
-- published_at_idx.
-- Binds, in order: the time; the most rows.
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts, published_at
FROM {published}
WHERE published_at >= ?
ORDER BY published_at, seq
LIMIT ?;
