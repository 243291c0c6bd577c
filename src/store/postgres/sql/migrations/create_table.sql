-- Creates the table of applied migration versions if it is missing.
CREATE TABLE IF NOT EXISTS {migrations} (
    version    bigint PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
