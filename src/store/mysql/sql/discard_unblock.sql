-- Lifts the block a discarded dead letter held on its key.
-- Binds, in order: the partition key, the dead letter's position.
DELETE FROM {blocked} WHERE partition_key = ? AND seq = ?;
