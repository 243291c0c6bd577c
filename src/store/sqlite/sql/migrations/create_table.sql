-- The table of applied migration versions.
CREATE TABLE IF NOT EXISTS {migrations} (
    version    INTEGER PRIMARY KEY,
    applied_at INTEGER NOT NULL
);
