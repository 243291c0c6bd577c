-- Parks up to $1 messages held behind a blocked key (migration 6 says
-- why), oldest first, walking the messages not parked from the earliest
-- block on. Returns how many it parked.
--
-- Run with the planner held to index scans without sorts or hash joins
-- (relay_ops.rs): right after a key is blocked the statistics still say
-- nothing is parked, and the planner would walk the primary key over
-- every message parked so far (measured: 0.3 s per statement with a
-- million parked, where this plan takes a few milliseconds to find the
-- next ones). The block is looked up once per message, as a value, so no
-- join can replace the lookup.
--
-- Blocks are not locked: a block lifted while this statement runs may see
-- messages parked behind it after its own unpark (unpark.sql) ran. Order
-- stays safe (a claim holds back what follows a parked message of its
-- key), and the next parking call unparks the key (unpark_lifted.sql).
--
-- $1 the most messages to park.
UPDATE {messages} m SET parked = true
WHERE m.seq = ANY(ARRAY(
          SELECT c.seq FROM {messages} c
          WHERE NOT c.parked AND NOT c.sleeping
            AND c.seq > (SELECT min(seq) FROM {blocked})
            AND (SELECT min(k.seq) FROM {blocked} k
                 WHERE k.partition_key = c.partition_key) < c.seq
          ORDER BY c.seq
          LIMIT $1))
  AND NOT m.parked
