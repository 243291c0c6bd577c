-- Lifts the block of one key (an operator's call), whatever position it
-- names; the message at that position stays where it is.
--
-- $1 key.
DELETE FROM {blocked} WHERE partition_key = $1
