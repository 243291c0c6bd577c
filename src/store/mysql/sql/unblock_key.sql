-- Lifts the blocks of one key (an operator's call), whatever positions
-- they name; the messages at those positions stay where they are.
-- Binds: the key.
DELETE FROM {blocked} WHERE partition_key = ?;
