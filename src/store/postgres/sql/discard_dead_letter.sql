-- Deletes a dead letter for good and lifts the block it held on its key.
-- Of several dead letters of one id (a re-enqueued id), the oldest goes.
-- Returns how many were deleted (0 or 1).
--
-- $1 id.
WITH d AS (DELETE FROM {dead_letters}
           WHERE seq = (SELECT min(seq) FROM {dead_letters} WHERE id = $1)
           RETURNING partition_key, seq),
     u AS (DELETE FROM {blocked} b USING d
           WHERE b.partition_key = d.partition_key AND b.seq = d.seq)
SELECT count(*) FROM d
