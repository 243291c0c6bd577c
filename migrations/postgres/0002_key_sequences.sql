-- The last per-key sequence number published for each partition key: the
-- relay numbers a key's messages 1, 2, 3, ... so a consumer can tell a gap
-- from a duplicate. Written by the relay only, never by producers.
CREATE TABLE {key_sequences} (
    partition_key text        PRIMARY KEY,
    last_sequence bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 5000);
