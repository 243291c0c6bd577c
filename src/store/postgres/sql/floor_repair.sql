-- Lowers the claims' low-water mark (migration 8) to the first message in
-- the claims' path below it, if there is one. There should be none:
-- whatever puts a message back below the mark lowers it in the same
-- statement (fragments/lower_floor.sql). This is the net for a statement
-- that does not: a relay built before migration 8 still running after it
-- and waking a message, or an operator's UPDATE by hand. It reads the
-- ready index below the mark, dead rows included, so the upkeep runs it
-- seldom (see floor.rs). Returns the position it lowered the mark to, or
-- NULL.
WITH back AS (
         SELECT m.seq FROM {messages} m
         WHERE NOT m.parked AND NOT m.sleeping
           AND m.seq < (SELECT f.seq FROM {ready_floor} f WHERE f.only_row)
         ORDER BY m.seq
         LIMIT 1),
     {lower_floor}
SELECT (SELECT min(seq) FROM back)
