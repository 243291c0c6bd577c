-- Messages held behind a blocked key leave the claims' path (see the
-- PostgreSQL migration of the same name): a relay's upkeep marks them
-- `parked` in bounded batches, every statement that lifts a block unparks
-- its key's messages in the same transaction, and claims read through
-- `messages_ready_idx`, which holds only the messages not parked.
ALTER TABLE {messages} ADD COLUMN parked INTEGER NOT NULL DEFAULT 0;
CREATE INDEX "{prefix}messages_ready_idx" ON {messages} (seq) WHERE parked = 0;
CREATE INDEX "{prefix}messages_parked_idx" ON {messages} (partition_key, seq) WHERE parked = 1;
