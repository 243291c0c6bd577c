-- Opens a generation: the current snapshot, and the first position of a
-- change committed as of it and not as of the snapshot consumed before,
-- found once through the txid index so that the generation's pages walk
-- positions from there.
--
-- $1 the snapshot consumed (text; NULL: from the start of the log).
WITH s AS (SELECT pg_current_snapshot() AS cur)
SELECT s.cur::text,
       (SELECT min(seq) FROM {changes}
        WHERE txid >= coalesce(pg_snapshot_xmin($1::text::pg_snapshot), '0'::xid8)
          AND txid < pg_snapshot_xmax(s.cur)
          AND pg_visible_in_snapshot(txid, s.cur)
          AND ($1::text IS NULL
               OR NOT pg_visible_in_snapshot(txid, $1::text::pg_snapshot)))
FROM s;
