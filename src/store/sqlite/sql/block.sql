-- Blocks keys behind a failed message, at the earliest blocked position of
-- each key, unless the message the standing block names is gone (such a
-- block no longer holds, see claim.sql): then the new position takes its
-- place, or the key would move on past the new failure.
-- Binds, in order: since (microseconds); [[key, seq], ...] as JSON.
INSERT INTO {blocked} (partition_key, seq, since)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?
FROM json_each(?)
-- `WHERE true` resolves the parser's ambiguity between a join's ON and the
-- upsert.
WHERE true
ON CONFLICT (partition_key) DO UPDATE
SET seq = CASE WHEN EXISTS (SELECT 1 FROM {messages} h
                            WHERE h.seq = {blocked}.seq)
                    OR EXISTS (SELECT 1 FROM {dead_letters} d
                               WHERE d.seq = {blocked}.seq)
               THEN min({blocked}.seq, excluded.seq)
               ELSE excluded.seq END,
    since = CASE WHEN EXISTS (SELECT 1 FROM {messages} h
                              WHERE h.seq = {blocked}.seq)
                      OR EXISTS (SELECT 1 FROM {dead_letters} d
                                 WHERE d.seq = {blocked}.seq)
                 THEN {blocked}.since
                 ELSE excluded.since END;
