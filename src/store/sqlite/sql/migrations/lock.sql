-- Deletes nothing (versions are positive): a write that takes SQLite's write
-- lock as a transaction's first statement.
DELETE FROM {migrations} WHERE version < 0;
