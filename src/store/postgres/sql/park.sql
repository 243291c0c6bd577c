-- Parks up to $1 messages held behind a blocked key (migration 6 says
-- why), oldest first, walking the messages not parked from the earliest
-- block on. Returns how many it parked.
--
-- The blocks are read FOR SHARE: a statement that lifts a block waits for
-- this one to commit, and its unpark then sees what this one parked (a
-- block lifted first is skipped here).
--
-- $1 the most messages to park.
WITH b AS MATERIALIZED (
         SELECT partition_key, seq FROM {blocked}
         ORDER BY partition_key
         FOR SHARE),
     p AS (
         SELECT m.seq FROM {messages} m
         WHERE NOT m.parked
           AND m.seq > (SELECT min(seq) FROM b)
           AND EXISTS (SELECT 1 FROM b
                       WHERE b.partition_key = m.partition_key AND b.seq < m.seq)
         ORDER BY m.seq
         LIMIT $1),
     u AS (
         UPDATE {messages} m SET parked = true
         FROM p WHERE m.seq = p.seq
         RETURNING 1)
SELECT count(*) FROM u
