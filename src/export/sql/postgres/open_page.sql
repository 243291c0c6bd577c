-- Opens a generation and reads its first page (see the fragment
-- `open_change_page`).
--
-- $1 the snapshot consumed (text; NULL: from the start of the log), $2 at
-- most this many rows.
WITH {open_change_page};
