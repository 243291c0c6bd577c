-- Blocks keys behind their failing heads: later messages of a key are not
-- claimed while its block stands. A key keeps its earliest blocking head,
-- unless the message the standing block names is gone (such a block no
-- longer holds, see claim_all.sql): then the new head takes its place, or
-- the key would move on past the new failure.
--
-- $1 keys (text[]), $2 the heads' positions (bigint[]).
INSERT INTO {blocked} (partition_key, seq)
SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (partition_key) DO UPDATE
SET seq = CASE WHEN EXISTS (SELECT 1 FROM {messages} h
                            WHERE h.seq = {blocked}.seq
                            UNION ALL
                            SELECT 1 FROM {dead_letters} d
                            WHERE d.seq = {blocked}.seq)
               THEN LEAST({blocked}.seq, excluded.seq)
               ELSE excluded.seq END,
    since = CASE WHEN EXISTS (SELECT 1 FROM {messages} h
                              WHERE h.seq = {blocked}.seq
                              UNION ALL
                              SELECT 1 FROM {dead_letters} d
                              WHERE d.seq = {blocked}.seq)
                 THEN {blocked}.since
                 ELSE excluded.since END
