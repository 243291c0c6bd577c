-- Schedules messages for another attempt, with their last error; one due
-- after $5 sleeps (migration 6) until the relays' upkeep wakes it.
--
-- $1 positions (bigint[]), $2 attempts made (int[]), $3 when each is due
-- again (timestamptz[]), $4 last errors (text[]), $5 the time after which
-- a retry sleeps.
--
-- `m.seq = ANY($1)` repeats the join's condition so that, whatever the
-- table's statistics say, the messages are found through the primary key
-- by the positions given (see dead.sql).
UPDATE {messages} m
SET attempts = u.attempts, available_at = u.at, last_error = u.err,
    sleeping = u.at > $5
FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::text[])
     u(seq, attempts, at, err)
WHERE m.seq = u.seq AND m.seq = ANY($1)
