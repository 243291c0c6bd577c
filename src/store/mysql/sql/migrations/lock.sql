-- Serializes migrations of one set of tables across processes: a named
-- lock of the session (DDL commits as it goes, so no transaction can),
-- named after the table of versions, waiting up to a minute. 1 when taken.
-- Binds: the table of versions; the lock is named by a hash of it and of
-- the database's name (lock names are server-wide, 64 characters at most).
SELECT GET_LOCK(CONCAT('outbox:', MD5(CONCAT_WS('.', DATABASE(), ?))), 60);
