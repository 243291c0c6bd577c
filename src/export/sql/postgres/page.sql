-- The next page of a generation (see the fragment `change_page`).
--
-- $1 the snapshot consumed (text; NULL: from the start of the log), $2 the
-- snapshot being read (text), $3 the last position read, $4 at most this
-- many rows.
{change_page};
