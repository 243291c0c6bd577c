-- Times are microseconds since the Unix epoch (UTC), so they compare as
-- integers.
CREATE TABLE {messages} (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             BLOB    NOT NULL UNIQUE,
    topic          TEXT    NOT NULL,
    partition_key  TEXT,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    content_type   TEXT    NOT NULL,
    headers        TEXT,
    created_at     INTEGER NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    available_at   INTEGER,
    last_error     TEXT
);

CREATE TABLE {dead_letters} (
    seq            INTEGER PRIMARY KEY,
    id             BLOB    NOT NULL UNIQUE,
    topic          TEXT    NOT NULL,
    partition_key  TEXT,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    content_type   TEXT    NOT NULL,
    headers        TEXT,
    created_at     INTEGER NOT NULL,
    attempts       INTEGER NOT NULL,
    last_error     TEXT    NOT NULL,
    dead_at        INTEGER NOT NULL
);

CREATE TABLE {published} (
    seq            INTEGER PRIMARY KEY,
    id             BLOB    NOT NULL,
    topic          TEXT    NOT NULL,
    partition_key  TEXT,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    content_type   TEXT    NOT NULL,
    headers        TEXT,
    created_at     INTEGER NOT NULL,
    attempts       INTEGER NOT NULL,
    published_at   INTEGER NOT NULL
);
CREATE INDEX {prefix}published_at_idx ON {published} (published_at);

CREATE TABLE {blocked} (
    partition_key TEXT    PRIMARY KEY,
    seq           INTEGER NOT NULL,
    since         INTEGER NOT NULL
);

-- SQLite has one writer: one bucket, so one relay drains at a time and the
-- others stand by.
CREATE TABLE {leases} (
    bucket     INTEGER PRIMARY KEY,
    owner      BLOB,
    epoch      INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL DEFAULT 0
);
INSERT INTO {leases} (bucket) VALUES (0);

CREATE TABLE {relays} (
    relay_id   BLOB    PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
