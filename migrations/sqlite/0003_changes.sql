-- SQLite has one writer, so positions follow commit order.
CREATE TABLE {changes} (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    entity_type TEXT    NOT NULL,
    entity_key  TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    data        TEXT,
    before      TEXT,
    created_at  INTEGER NOT NULL
);

CREATE TABLE {export_cursors} (
    consumer   TEXT    PRIMARY KEY,
    cursor     TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);
