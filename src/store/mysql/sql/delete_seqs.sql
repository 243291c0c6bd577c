-- Deletes messages by position (published, or moved to the dead letters):
-- a range read of the primary key over a list of parameters ({list}, one
-- per position, filled in by Sql::list), so only those rows are locked
-- (joined with JSON_TABLE, MariaDB scans the table and waits for every
-- producer's uncommitted message on its way).
-- Binds: the positions.
DELETE FROM {messages} WHERE seq IN ({list});
