-- What is known of the outbox apart from its messages (topic_stats.sql
-- counts those): the number of dead letters, the server's estimate of the
-- bytes the messages table takes with its indexes, and the last position
-- assigned (AUTO_INCREMENT as information_schema reports it: MySQL 8
-- caches it for information_schema_stats_expiry, MariaDB does not).
-- Binds, in order: the messages table's name, twice.
SELECT (SELECT COUNT(*) FROM {dead_letters}) AS dead,
       (SELECT CAST(data_length + index_length AS SIGNED)
        FROM information_schema.tables
        WHERE table_schema = DATABASE() AND table_name = ?) AS bytes,
       (SELECT CAST(auto_increment AS SIGNED) - 1
        FROM information_schema.tables
        WHERE table_schema = DATABASE() AND table_name = ?) AS last_position;
