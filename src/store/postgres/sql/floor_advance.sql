-- Raises the claims' low-water mark (migration 8) once every transaction
-- of a mark (floor_mark.sql, floor_xid.sql) has ended, that is once no
-- transaction with an id up to the mark's is still running (the oldest
-- running one, this statement's snapshot's xmin, is newer): up to one past
-- the mark's position, or to the first message in the claims' path at or
-- above the current mark if that is lower. Every transaction of the mark
-- ended before this statement's snapshot, so the scan sees each position
-- up to the mark's committed or gone; a position drawn later is above it.
-- A message put back in the claims' path below the new mark by a
-- transaction this scan cannot see lowers the mark itself when it commits
-- (fragments/lower_floor.sql): if it commits first, the version changed
-- and this update is skipped; if later, it lowers what this one raised.
-- The scan starts at the current mark, so it reads only what was deleted
-- since the last raise. Returns whether the mark's transactions had all
-- ended, and the new mark if it rose.
--
-- $1 the mark's position, $2 its transaction id (text).
WITH cur AS (SELECT seq, version FROM {ready_floor} WHERE only_row),
     settled AS (
         SELECT pg_snapshot_xmin(pg_current_snapshot()) > $2::text::xid8 AS ok),
     first AS (
         SELECT m.seq FROM {messages} m
         WHERE NOT m.parked AND NOT m.sleeping
           AND m.seq >= (SELECT seq FROM cur)
         ORDER BY m.seq
         LIMIT 1),
     target AS (SELECT LEAST($1 + 1, coalesce((SELECT seq FROM first), $1 + 1)) AS seq),
     up AS (
         UPDATE {ready_floor} f SET seq = (SELECT seq FROM target)
         FROM cur
         WHERE f.only_row AND f.version = cur.version
           AND (SELECT ok FROM settled)
           AND (SELECT seq FROM target) > f.seq
         RETURNING f.seq)
SELECT (SELECT ok FROM settled), (SELECT seq FROM up)
