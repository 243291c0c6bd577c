-- Wakes the sleeping messages due by $1 (now and a little more, so they
-- are back in the claims' path before they are due). Returns how many.
UPDATE {messages} SET sleeping = false
WHERE sleeping AND available_at <= $1
