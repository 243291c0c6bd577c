-- Schedules the next attempt of failed messages.
-- Binds: [[seq, attempts, available_at (microseconds), error], ...] as JSON.
UPDATE {messages}
SET attempts = u.attempts, available_at = u.at, last_error = u.err
FROM (SELECT json_extract(value, '$[0]') AS seq,
             json_extract(value, '$[1]') AS attempts,
             json_extract(value, '$[2]') AS at,
             json_extract(value, '$[3]') AS err
      FROM json_each(?)) u
WHERE {messages}.seq = u.seq;
