-- Pending messages, the creation time of the oldest (microseconds) and the
-- number of dead letters.
SELECT (SELECT count(*) FROM {messages}),
       (SELECT min(created_at) FROM {messages}),
       (SELECT count(*) FROM {dead_letters});
