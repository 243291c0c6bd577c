-- A relay whose every publish fails says so in its heartbeat, with the
-- publisher's error, so `outbox status` shows it from another process.
--
-- MySQL has no ADD COLUMN IF NOT EXISTS: the statement is built only while
-- the column is missing, so the migration can run again after a failure
-- part way (DDL commits on its own).
SET @outbox_ddl = (
    SELECT IF(COUNT(*) = 0,
              'ALTER TABLE {relays} ADD COLUMN publish_error LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin',
              'DO 0')
    FROM information_schema.columns
    WHERE table_schema = DATABASE()
      AND table_name = '{prefix}relays'
      AND column_name = 'publish_error');
PREPARE outbox_ddl FROM @outbox_ddl;
EXECUTE outbox_ddl;
DEALLOCATE PREPARE outbox_ddl;
