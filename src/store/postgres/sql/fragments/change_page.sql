-- The rows of a change-log page (export/sql/postgres/page.sql and
-- commit_page.sql): the logged changes committed as of the snapshot being
-- read and not as of the one consumed before it, after a position, in
-- position order. Each snapshot is cast once per statement (the scalar
-- subqueries), not once per row. Columns are decoded by index (see
-- `read_page_on` in export/postgres.rs).
--
-- $1 the snapshot consumed (text; NULL: from the start of the log), $2 the
-- snapshot being read (text), $3 the last position read, $4 at most this
-- many rows.
SELECT seq, entity_type, entity_key, kind, data::text AS data,
       before::text AS before
FROM {changes}
WHERE pg_visible_in_snapshot(txid, (SELECT $2::text::pg_snapshot))
  AND ($1::text IS NULL
       OR NOT pg_visible_in_snapshot(txid, (SELECT $1::text::pg_snapshot)))
  AND seq > $3
ORDER BY seq
LIMIT $4
