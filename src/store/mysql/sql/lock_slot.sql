-- Takes the commit-order lock of one key: its slot's row lock, held until
-- the producer's transaction ends (see lock_slots.sql).
-- Binds: the slot.
SELECT slot FROM {key_slots} WHERE slot = ? FOR UPDATE;
