-- The outbox's tables on MySQL 8.0+ and MariaDB 10.6+, InnoDB.
--
-- MySQL's DDL commits as it goes, so a migration cannot be one
-- transaction: every statement here can run again after a failure part
-- way (IF NOT EXISTS, INSERT IGNORE), and the runner records the version
-- only once all of them went through.
--
-- Times are DATETIME(6) in UTC. Ids are 16 bytes. Partition keys are
-- VARBINARY: compared byte for byte (MySQL's usual collations ignore case
-- and trailing spaces) and short enough, at 1024 bytes, for an index.
-- Names that are only read back are utf8mb4 text compared by code point.

CREATE TABLE IF NOT EXISTS {messages} (
    seq            BIGINT        NOT NULL AUTO_INCREMENT,
    id             BINARY(16)    NOT NULL,
    topic          VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    partition_key  VARBINARY(1024),
    event_type     VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    schema_version INT           NOT NULL,
    payload        LONGBLOB      NOT NULL,
    content_type   VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    headers        LONGTEXT      CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    created_at     DATETIME(6)   NOT NULL,
    attempts       INT           NOT NULL DEFAULT 0,
    available_at   DATETIME(6),
    last_error     LONGTEXT      CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    -- Held behind a blocked key, or asleep until a retry due later than a
    -- moment from now (see the PostgreSQL migration 6): out of the claims'
    -- path, which reads messages_ready_idx at (false, false) in position
    -- order. MySQL has no partial indexes; the flags lead the indexes
    -- instead.
    parked         BOOLEAN       NOT NULL DEFAULT FALSE,
    sleeping       BOOLEAN       NOT NULL DEFAULT FALSE,
    PRIMARY KEY (seq),
    UNIQUE KEY `{prefix}messages_id_key` (id),
    KEY `{prefix}messages_ready_idx` (parked, sleeping, seq),
    KEY `{prefix}messages_parked_idx` (parked, partition_key, seq),
    KEY `{prefix}messages_sleeping_idx` (sleeping, available_at)
) ENGINE = InnoDB;

-- Keyed by position alone, as key blocks are: an id is unique only among
-- pending messages.
CREATE TABLE IF NOT EXISTS {dead_letters} (
    seq            BIGINT        NOT NULL,
    id             BINARY(16)    NOT NULL,
    topic          VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    partition_key  VARBINARY(1024),
    event_type     VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    schema_version INT           NOT NULL,
    payload        LONGBLOB      NOT NULL,
    content_type   VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    headers        LONGTEXT      CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    created_at     DATETIME(6)   NOT NULL,
    attempts       INT           NOT NULL,
    last_error     LONGTEXT      CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    dead_at        DATETIME(6)   NOT NULL,
    PRIMARY KEY (seq),
    KEY `{prefix}dead_letters_id_idx` (id)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS {published} (
    seq            BIGINT        NOT NULL,
    id             BINARY(16)    NOT NULL,
    topic          VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    partition_key  VARBINARY(1024),
    event_type     VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    schema_version INT           NOT NULL,
    payload        LONGBLOB      NOT NULL,
    content_type   VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    headers        LONGTEXT      CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    created_at     DATETIME(6)   NOT NULL,
    attempts       INT           NOT NULL,
    published_at   DATETIME(6)   NOT NULL,
    PRIMARY KEY (seq),
    KEY `{prefix}published_at_idx` (published_at)
) ENGINE = InnoDB;

-- A key may be blocked by several failing heads at once.
CREATE TABLE IF NOT EXISTS {blocked} (
    partition_key VARBINARY(1024) NOT NULL,
    seq           BIGINT          NOT NULL,
    since         DATETIME(6)     NOT NULL,
    PRIMARY KEY (partition_key, seq)
) ENGINE = InnoDB;

-- 64 buckets of the key space, each leased to one relay; the epoch is the
-- fencing token.
CREATE TABLE IF NOT EXISTS {leases} (
    bucket     INT         NOT NULL,
    owner      BINARY(16),
    epoch      BIGINT      NOT NULL DEFAULT 0,
    expires_at DATETIME(6) NOT NULL DEFAULT '1970-01-01 00:00:00',
    PRIMARY KEY (bucket)
) ENGINE = InnoDB;
INSERT IGNORE INTO {leases} (bucket)
SELECT a.n + 16 * b.n
FROM (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3
      UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7
      UNION ALL SELECT 8 UNION ALL SELECT 9 UNION ALL SELECT 10 UNION ALL SELECT 11
      UNION ALL SELECT 12 UNION ALL SELECT 13 UNION ALL SELECT 14 UNION ALL SELECT 15) a
CROSS JOIN (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3) b;

CREATE TABLE IF NOT EXISTS {relays} (
    relay_id   BINARY(16)  NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    PRIMARY KEY (relay_id)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS {key_sequences} (
    partition_key VARBINARY(1024) NOT NULL,
    last_sequence BIGINT          NOT NULL,
    updated_at    DATETIME(6)     NOT NULL,
    PRIMARY KEY (partition_key)
) ENGINE = InnoDB;

-- Commit-order locks: an enqueue locks its key's slot (FOR UPDATE) before
-- it inserts, until the producer's transaction ends, so two transactions
-- enqueueing for one key commit in the order their positions were given.
-- 65,536 rows whatever the number of keys; two keys in one slot merely
-- serialize their writers' commits.
CREATE TABLE IF NOT EXISTS {key_slots} (
    slot INT NOT NULL,
    PRIMARY KEY (slot)
) ENGINE = InnoDB;
INSERT IGNORE INTO {key_slots} (slot)
SELECT a.n + 16 * b.n + 256 * c.n + 4096 * d.n
FROM (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3
      UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7
      UNION ALL SELECT 8 UNION ALL SELECT 9 UNION ALL SELECT 10 UNION ALL SELECT 11
      UNION ALL SELECT 12 UNION ALL SELECT 13 UNION ALL SELECT 14 UNION ALL SELECT 15) a
CROSS JOIN (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3
      UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7
      UNION ALL SELECT 8 UNION ALL SELECT 9 UNION ALL SELECT 10 UNION ALL SELECT 11
      UNION ALL SELECT 12 UNION ALL SELECT 13 UNION ALL SELECT 14 UNION ALL SELECT 15) b
CROSS JOIN (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3
      UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7
      UNION ALL SELECT 8 UNION ALL SELECT 9 UNION ALL SELECT 10 UNION ALL SELECT 11
      UNION ALL SELECT 12 UNION ALL SELECT 13 UNION ALL SELECT 14 UNION ALL SELECT 15) c
CROSS JOIN (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3
      UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7
      UNION ALL SELECT 8 UNION ALL SELECT 9 UNION ALL SELECT 10 UNION ALL SELECT 11
      UNION ALL SELECT 12 UNION ALL SELECT 13 UNION ALL SELECT 14 UNION ALL SELECT 15) d;

-- The change log. A position (seq) is given at insert, so positions do
-- not follow commit order; the stamp does: the sequencer (one row, locked
-- while it works) stamps committed changes, in position order, with
-- numbers that only grow, and readers page by stamp. A change is readable
-- once stamped.
CREATE TABLE IF NOT EXISTS {changes} (
    seq         BIGINT        NOT NULL AUTO_INCREMENT,
    stamp       BIGINT,
    entity_type VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    entity_key  VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    kind        VARCHAR(16)   CHARACTER SET ascii NOT NULL,
    data        LONGTEXT      CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    `before`    LONGTEXT      CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    created_at  DATETIME(6)   NOT NULL,
    PRIMARY KEY (seq),
    UNIQUE KEY `{prefix}changes_stamp_key` (stamp)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS {sequencer} (
    id         INT    NOT NULL,
    last_stamp BIGINT NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB;
INSERT IGNORE INTO {sequencer} (id, last_stamp) VALUES (1, 0);

CREATE TABLE IF NOT EXISTS {export_cursors} (
    consumer   VARBINARY(1024) NOT NULL,
    `cursor`   LONGTEXT        CHARACTER SET ascii NOT NULL,
    updated_at DATETIME(6)     NOT NULL,
    PRIMARY KEY (consumer)
) ENGINE = InnoDB;
