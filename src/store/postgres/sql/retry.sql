-- Schedules messages for another attempt, with their last error.
--
-- $1 positions (bigint[]), $2 attempts made (int[]), $3 when each is due
-- again (timestamptz[]), $4 last errors (text[]).
UPDATE {messages} m
SET attempts = u.attempts, available_at = u.at, last_error = u.err
FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::text[])
     u(seq, attempts, at, err)
WHERE m.seq = u.seq
