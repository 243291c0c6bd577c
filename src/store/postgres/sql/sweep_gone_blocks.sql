-- Deletes the key blocks whose message is gone (neither pending nor dead):
-- deleted by hand, or orphaned by a version that overwrote dead letters.
-- Such a block holds nothing, and would stop its key for good. Run beside a
-- claim at most once a second (BlockSweep in store/mod.rs says why not
-- inside it); the table is tiny. A block and its message always change in
-- one transaction, so no live block is ever seen without its message.
DELETE FROM {blocked} b
WHERE NOT EXISTS (SELECT 1 FROM {messages} h WHERE h.seq = b.seq)
  AND NOT EXISTS (SELECT 1 FROM {dead_letters} d WHERE d.seq = b.seq)
