-- The next messages due, by position, leaving out every message whose key
-- is blocked at an earlier position and the positions still in flight. A
-- block holds only while the message it names exists (pending, or dead): one
-- whose message is gone (deleted outside the crate, or orphaned by a version
-- that overwrote dead letters) must not stop its key for good. The check
-- runs only for a block row that matches a message's key behind its
-- position, so a claim over unblocked keys costs no more than before.
-- Binds, in order: now (microseconds); the positions in flight as a JSON
-- array; the limit.
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts
FROM {messages} m
WHERE (m.available_at IS NULL OR m.available_at <= ?)
  AND NOT EXISTS (SELECT 1 FROM {blocked} k
                  WHERE k.partition_key = m.partition_key AND k.seq < m.seq
                    AND (EXISTS (SELECT 1 FROM {messages} h
                                 WHERE h.seq = k.seq)
                         OR EXISTS (SELECT 1 FROM {dead_letters} d
                                    WHERE d.seq = k.seq)))
  AND m.seq NOT IN (SELECT value FROM json_each(?))
ORDER BY m.seq
LIMIT ?;
