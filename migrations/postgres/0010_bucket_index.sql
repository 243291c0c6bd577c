-- Ready messages by bucket, then position: a relay holding some of the
-- buckets reads only its own (claim_buckets.sql merges one ordered scan
-- per bucket it holds), where a walk of messages_ready_idx in position
-- order reads every relay's messages to find its own, so that each of n
-- relays read about n times what it claimed. The expression is the
-- claim's bucket for the 64 buckets migration 1 creates, written exactly
-- as the claim writes it (a claim under another bucket count walks
-- messages_ready_idx as before). Producers pay one more index entry per
-- message. Building it reads the table once, under a lock that holds
-- producers back while it lasts (run `migrate()` before the traffic).
CREATE INDEX {prefix}messages_bucket_idx ON {messages} (
    (CASE WHEN partition_key IS NULL THEN (seq % 64)::int
          ELSE (hashtext(partition_key) & 2147483647) % 64
     END),
    seq)
    WHERE NOT parked AND NOT sleeping;
