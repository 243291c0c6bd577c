-- Unparks the messages of the given keys that no block holds any longer:
-- run in the transaction that lifted the blocks, after it.
-- Binds: [[key, seq], ...] as JSON (the lifted blocks).
UPDATE {messages} INDEXED BY "{prefix}messages_parked_idx" SET parked = 0
WHERE parked = 1
  AND partition_key IN (SELECT json_extract(value, '$[0]') FROM json_each(?))
  AND NOT EXISTS (SELECT 1 FROM {blocked} k
                  WHERE k.partition_key = {messages}.partition_key
                    AND k.seq < {messages}.seq);
