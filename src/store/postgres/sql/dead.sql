-- Moves messages to the dead letters with their attempts and last error.
-- Dead letters are keyed by position, like key blocks: a message whose id is
-- already among the dead letters (a producer enqueued it again) becomes a
-- dead letter of its own and never replaces the older one.
--
-- $1 positions (bigint[]), $2 attempts made (int[]), $3 last errors (text[]).
--
-- `m.seq = ANY($1)` repeats the join's condition so that, whatever the
-- table's statistics say (a generic plan made while they said it was
-- empty), the messages are found through the primary key by the positions
-- given, never by a scan of the whole index for each of them.
WITH d AS (
    DELETE FROM {messages} m
    USING unnest($1::bigint[], $2::int[], $3::text[]) u(seq, attempts, err)
    WHERE m.seq = u.seq AND m.seq = ANY($1)
    RETURNING m.*, u.attempts AS new_attempts, u.err)
INSERT INTO {dead_letters} (seq, id, topic, partition_key, event_type,
                            schema_version, payload, content_type, headers,
                            created_at, attempts, last_error, dead_at)
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, new_attempts, err, now()
FROM d
