-- Deletes the key blocks whose message is gone (neither pending nor dead).
-- Run before a claim at most once a second (BlockSweep in store/mod.rs).
DELETE FROM {blocked}
WHERE NOT EXISTS (SELECT 1 FROM {messages} h WHERE h.seq = {blocked}.seq)
  AND NOT EXISTS (SELECT 1 FROM {dead_letters} d WHERE d.seq = {blocked}.seq);
