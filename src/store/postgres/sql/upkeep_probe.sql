-- What the upkeep's pass has to do, in one look through the partial
-- indexes that are empty while nothing is stuck, so a quiet outbox costs
-- one statement a second rather than four transactions: whether sleeping
-- messages are due by $1 (wake_sleeping.sql), whether any message is
-- parked (unpark_lifted.sql), whether any key is blocked (park.sql), the
-- last position the messages' sequence handed out (NULL before the first,
-- and for a role that may not read the sequence, whose upkeep cannot
-- take a mark anyway) and the claims' low-water mark (floor.rs: nothing to
-- raise once the mark is past that position). Nothing here may fail for a
-- role the rest of the pass works for: waking and unparking depend on it.
--
-- $1 the wake-up horizon, $2 the messages table's name.
SELECT EXISTS (SELECT 1 FROM {messages} WHERE sleeping AND available_at <= $1),
       EXISTS (SELECT 1 FROM {messages} WHERE parked),
       EXISTS (SELECT 1 FROM {blocked}),
       (SELECT CASE WHEN has_sequence_privilege(q.s, 'SELECT')
                    THEN pg_sequence_last_value(q.s) END
          FROM (SELECT pg_get_serial_sequence($2, 'seq')::regclass AS s) q),
       (SELECT seq FROM {ready_floor} WHERE only_row)
