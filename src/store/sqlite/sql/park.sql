-- Parks up to ? messages held behind a blocked key (migration 5), oldest
-- first. SQLite runs one writer at a time, so no lift of a block can
-- interleave with it (on PostgreSQL one can, and the next pass's
-- unpark_lifted.sql repairs what it leaves).
-- Binds: the most messages to park.
UPDATE {messages} SET parked = 1
WHERE seq IN (
    SELECT m.seq FROM {messages} m INDEXED BY "{prefix}messages_ready_idx"
    WHERE m.parked = 0 AND m.sleeping = 0
      AND m.seq > (SELECT min(seq) FROM {blocked})
      AND EXISTS (SELECT 1 FROM {blocked} b
                  WHERE b.partition_key = m.partition_key AND b.seq < m.seq)
    ORDER BY m.seq
    LIMIT ?);
