-- A new generation's first page in one statement (export/sql/postgres/
-- open_page.sql and commit_open_page.sql): the generation, the current
-- snapshot and the first position of a change committed as of it and not
-- as of the snapshot consumed before (found once through the txid index,
-- so that the generation's pages walk positions from there), and the page
-- of the fragment `change_page` from that position. It returns the page's
-- rows, then one more row without a change that carries the
-- snapshot, so even a caught-up consumer's call is one statement. No
-- ORDER BY over the whole: the page's rows stream in position order from
-- the primary key (a sort over a union would hold up to a page of
-- documents); the caller finds the snapshot's row by its NULL position.
-- Columns are decoded by index (see `read_page_on` in export/postgres.rs).
--
-- A list of common table expressions and the final SELECT, to follow
-- `WITH` or another expression's comma.
--
-- $1 the snapshot consumed (text; NULL: from the start of the log), $2 at
-- most this many rows.
gen AS (
    SELECT s.cur,
           (SELECT min(seq) FROM {changes}
            WHERE txid >= coalesce(pg_snapshot_xmin($1::text::pg_snapshot), '0'::xid8)
              AND txid < pg_snapshot_xmax(s.cur)
              AND pg_visible_in_snapshot(txid, s.cur)
              AND ($1::text IS NULL
                   OR NOT pg_visible_in_snapshot(txid, (SELECT $1::text::pg_snapshot)))) AS first
    FROM (SELECT pg_current_snapshot() AS cur) s),
page AS (
    SELECT seq, entity_type, entity_key, kind, data::text AS data,
           before::text AS before
    FROM {changes}
    WHERE pg_visible_in_snapshot(txid, (SELECT cur FROM gen))
      AND ($1::text IS NULL
           OR NOT pg_visible_in_snapshot(txid, (SELECT $1::text::pg_snapshot)))
      AND seq >= (SELECT first FROM gen)
    ORDER BY seq
    LIMIT $2)
SELECT seq, entity_type, entity_key, kind, data, before, NULL::text AS snapshot
FROM page
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, gen.cur::text FROM gen
