-- The idempotent consumer's tables, in the consumer's database.

-- The ids of the messages each consumer has received, written in the
-- consumer's own transaction together with its effects. Purged by age
-- (received_at); the primary key answers "seen before?".
CREATE TABLE {inbox_messages} (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX {prefix}inbox_received_idx ON {inbox_messages} (received_at);

-- The last per-key sequence number each consumer received, per partition
-- key. Never purged: after a message's id is purged, its sequence number is
-- what still recognizes a redelivery. previous_sequence is the number it
-- replaced, which lets one upsert report the gap it closed.
CREATE TABLE {inbox_keys} (
    consumer          text        NOT NULL,
    partition_key     text        NOT NULL,
    last_sequence     bigint      NOT NULL,
    previous_sequence bigint,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, partition_key)
);
