-- Schedules the next attempt of failed messages; one due after the time
-- given sleeps until the relays' upkeep wakes it. The messages are read by
-- primary key over the list of positions (see delete_seqs.sql).
-- Binds, in order: [[seq, attempts, available_at, error], ...] as JSON
-- (times as 'YYYY-MM-DD hh:mm:ss.ffffff', UTC); the time after which a
-- retry sleeps; the positions ({list}).
UPDATE {messages} m
JOIN JSON_TABLE(?, '$[*]' COLUMNS (seq      BIGINT      PATH '$[0]',
                                   attempts INT         PATH '$[1]',
                                   at       DATETIME(6) PATH '$[2]',
                                   err      LONGTEXT    PATH '$[3]')) u
  ON m.seq = u.seq
SET m.attempts = u.attempts, m.available_at = u.at, m.last_error = u.err,
    m.sleeping = u.at > ?
WHERE m.seq IN ({list});
