-- Lifts the block of one key (an operator's call), whatever position it
-- names; the message at that position stays where it is.
-- Binds: the key.
DELETE FROM {blocked} WHERE partition_key = ?;
