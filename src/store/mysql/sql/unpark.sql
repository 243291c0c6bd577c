-- Unparks the messages of the given keys that no block holds any longer:
-- run in the transaction that lifted the blocks, after it. The keys come
-- as a list ({list}), read through messages_parked_idx.
-- Binds: the keys of the lifted blocks.
UPDATE {messages} m
SET m.parked = FALSE
WHERE m.parked = TRUE
  AND m.partition_key IN ({list})
  AND NOT EXISTS (SELECT 1 FROM {blocked} b
                  WHERE b.partition_key = m.partition_key AND b.seq < m.seq);
