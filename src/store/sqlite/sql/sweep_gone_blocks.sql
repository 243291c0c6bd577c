-- Deletes the key blocks whose message is gone (neither pending nor dead):
-- deleted by hand, or orphaned by a version that overwrote dead letters.
-- Such a block holds nothing, and would stop its key for good. Run before a
-- claim at most once a second (BlockSweep in store/mod.rs says why not
-- inside it); the table is tiny.
DELETE FROM {blocked}
WHERE NOT EXISTS (SELECT 1 FROM {messages} h WHERE h.seq = {blocked}.seq)
  AND NOT EXISTS (SELECT 1 FROM {dead_letters} d
                  WHERE d.seq = {blocked}.seq);
