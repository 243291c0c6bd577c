-- Wakes the sleeping messages due by the time given (now and a little
-- more, so they are back in the claims' path before they are due).
-- Binds: that time.
UPDATE {messages} SET sleeping = FALSE
WHERE sleeping = TRUE AND available_at <= ?;
