-- Releases the lock of lock.sql.
-- Binds: the table of versions.
SELECT RELEASE_LOCK(CONCAT('outbox:', MD5(CONCAT_WS('.', DATABASE(), ?))));
