-- The last position the messages' sequence handed out (NULL before the
-- first), the first half of a mark for floor_advance.sql; the second half,
-- floor_xid.sql, must follow it, in a statement of its own.
--
-- $1 the messages table's name.
SELECT pg_sequence_last_value(pg_get_serial_sequence($1, 'seq')::regclass)
