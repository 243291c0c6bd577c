-- Takes the commit-order locks of a batch: row locks on the key slots its
-- keys hash to (migration 1), held until the producer's transaction ends.
-- {slots} is replaced by one parameter per slot; the slots come sorted,
-- and a range read of the primary key locks them in that order, so two
-- producers lock shared slots in one order and cannot deadlock on them.
-- Only the number of parameters is filled in, never a value.
SELECT slot FROM {key_slots} WHERE slot IN ({slots}) ORDER BY slot FOR UPDATE;
