-- Wakes the sleeping messages due by $1 (now and a little more, so they
-- are back in the claims' path before they are due), lowering the claims'
-- low-water mark to them (fragments/lower_floor.sql). Returns how many.
WITH back AS (
         UPDATE {messages} SET sleeping = false
         WHERE sleeping AND available_at <= $1
         RETURNING seq),
     {lower_floor}
SELECT count(*) FROM back
