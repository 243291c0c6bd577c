-- The second half of a mark (floor_mark.sql comes first): gives the
-- marking transaction an id, newer than the id of every transaction that
-- drew a position up to the mark (insert.sql gives a transaction its id
-- before it draws a position). Once every transaction up to this id has
-- ended, every position up to the mark is committed or gone. Run while
-- the transaction has no id yet, or the id would predate the position.
SELECT pg_current_xact_id()::text
