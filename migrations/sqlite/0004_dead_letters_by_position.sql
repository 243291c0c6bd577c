-- Dead letters are keyed by their position alone, as key blocks are: a
-- message id is unique only among pending messages, so a producer may
-- enqueue an id again after its first message was dead-lettered, and the
-- second dead letter must not replace the first (whose block would then
-- name a message that no longer exists). SQLite cannot drop a column's
-- UNIQUE constraint, so the table is rebuilt with every row, in the
-- migration's transaction, and a plain index serves look-ups by id.
CREATE TABLE "{prefix}dead_letters_rebuilt" (
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
    last_error     TEXT    NOT NULL,
    dead_at        INTEGER NOT NULL
);
INSERT INTO "{prefix}dead_letters_rebuilt"
SELECT seq, id, topic, partition_key, event_type, schema_version, payload,
       content_type, headers, created_at, attempts, last_error, dead_at
FROM {dead_letters};
DROP TABLE {dead_letters};
ALTER TABLE "{prefix}dead_letters_rebuilt" RENAME TO "{prefix}dead_letters";
CREATE INDEX "{prefix}dead_letters_id_idx" ON {dead_letters} (id);
