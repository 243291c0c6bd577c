-- What is in the outbox: pending messages, the creation time of the
-- oldest, the number of dead letters, messages whose retry is not due,
-- messages due but held back behind a blocked key, and the server's
-- estimate of the bytes the messages table takes with its indexes, and the
-- last position assigned (AUTO_INCREMENT as information_schema reports it:
-- MySQL 8 caches it for information_schema_stats_expiry, MariaDB does
-- not). The messages table is read once.
-- Binds, in order: now, twice; the messages table's name, twice.
SELECT COUNT(*) AS pending,
       MIN(m.created_at) AS oldest,
       (SELECT COUNT(*) FROM {dead_letters}) AS dead,
       CAST(COALESCE(SUM(m.available_at > ?), 0) AS SIGNED) AS waiting,
       CAST(COALESCE(SUM((m.available_at IS NULL OR m.available_at <= ?)
                         AND (m.parked OR EXISTS (SELECT 1 FROM {blocked} k
                                                  WHERE k.partition_key = m.partition_key
                                                    AND k.seq < m.seq))), 0) AS SIGNED) AS held,
       (SELECT CAST(data_length + index_length AS SIGNED)
        FROM information_schema.tables
        WHERE table_schema = DATABASE() AND table_name = ?) AS bytes,
       (SELECT CAST(auto_increment AS SIGNED) - 1
        FROM information_schema.tables
        WHERE table_schema = DATABASE() AND table_name = ?) AS last_position
FROM {messages} m;
