-- The idempotent consumer's tables, in the consumer's database (MySQL 8.0+,
-- MariaDB 10.6+). Times are DATETIME(6) in UTC, computed in Rust, ids are
-- 16-byte binaries. Consumer names and partition keys are VARBINARY, so they
-- compare byte for byte (the default collations ignore case) and fit
-- InnoDB's 3072-byte index limit.
--
-- DDL commits on its own in MySQL, so each statement is safe to run again
-- after a failure part way through.

-- The ids of the messages each consumer has received, written in the
-- consumer's own transaction together with its effects. Purged by age
-- (received_at). The primary key answers "seen before?".
CREATE TABLE IF NOT EXISTS {inbox_messages} (
    consumer    VARBINARY(1024) NOT NULL,
    message_id  BINARY(16)      NOT NULL,
    received_at DATETIME(6)     NOT NULL,
    PRIMARY KEY (consumer, message_id),
    INDEX `{prefix}inbox_received_idx` (received_at)
) ENGINE=InnoDB;

-- The last per-key sequence number each consumer received, per partition
-- key. Never purged: after a message's id is purged, its sequence number is
-- what still recognizes a redelivery. last_message is the id of the message
-- that set last_sequence. previous_sequence is the number an advance
-- replaced (NULL for a new key), which lets the receive that advanced report
-- the gap it closed. A stale delivery sets it equal to last_sequence, which
-- an advance never leaves, so the receive can tell it did not advance.
CREATE TABLE IF NOT EXISTS {inbox_keys} (
    consumer          VARBINARY(1024) NOT NULL,
    partition_key     VARBINARY(1024) NOT NULL,
    last_sequence     BIGINT          NOT NULL,
    previous_sequence BIGINT          NULL,
    last_message      BINARY(16)      NOT NULL,
    updated_at        DATETIME(6)     NOT NULL,
    PRIMARY KEY (consumer, partition_key)
) ENGINE=InnoDB;
