-- Deletes every dead letter (after replay_all_insert.sql copied them back).
DELETE FROM {dead_letters};
