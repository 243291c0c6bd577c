-- Wakes the sleeping messages due by the time given (now and a little
-- more, so they are back in the claims' path before they are due).
-- Binds: that time (microseconds).
UPDATE {messages} INDEXED BY "{prefix}messages_sleeping_idx" SET sleeping = 0
WHERE sleeping = 1 AND available_at <= ?;
