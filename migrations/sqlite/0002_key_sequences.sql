CREATE TABLE {key_sequences} (
    partition_key TEXT    PRIMARY KEY,
    last_sequence INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
