-- The transactions in progress now, as a snapshot's text: read after
-- floor_mark.sql, they hold every position up to its value that is not
-- committed yet (insert.sql gives a transaction its id before it draws a
-- position).
SELECT pg_current_snapshot()::text
