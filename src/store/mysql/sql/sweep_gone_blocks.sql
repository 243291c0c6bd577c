-- The key blocks whose message is gone (neither pending nor dead), read
-- without locking; unblock.sql then deletes them by primary key. A gone
-- position never comes back (a replay brings back a dead letter, which is
-- not gone), so the read may be stale. Run before a claim at most once a
-- second (BlockSweep in store/mod.rs).
SELECT b.partition_key, b.seq
FROM {blocked} b
WHERE NOT EXISTS (SELECT 1 FROM {messages} h WHERE h.seq = b.seq)
  AND NOT EXISTS (SELECT 1 FROM {dead_letters} d WHERE d.seq = b.seq)
LIMIT 1000;
