-- Schedules the next attempt of failed messages; one due after the time
-- given sleeps (migration 5) until the relays' upkeep wakes it.
-- Binds: [[seq, attempts, available_at (microseconds), error], ...] as
-- JSON; the time after which a retry sleeps (microseconds).
UPDATE {messages}
SET attempts = u.attempts, available_at = u.at, last_error = u.err,
    sleeping = u.at > ?2
FROM (SELECT json_extract(value, '$[0]') AS seq,
             json_extract(value, '$[1]') AS attempts,
             json_extract(value, '$[2]') AS at,
             json_extract(value, '$[3]') AS err
      FROM json_each(?1)) u
WHERE {messages}.seq = u.seq;
