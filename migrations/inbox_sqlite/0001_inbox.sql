-- The idempotent consumer's tables, in the consumer's database. Times are
-- microseconds since the Unix epoch (UTC), ids 16-byte blobs.

-- The ids of the messages each consumer has received, written in the
-- consumer's own transaction together with its effects. Purged by age
-- (received_at); the primary key answers "seen before?".
CREATE TABLE {inbox_messages} (
    consumer    TEXT    NOT NULL,
    message_id  BLOB    NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX {prefix}inbox_received_idx ON {inbox_messages} (received_at);

-- The last per-key sequence number each consumer received, per partition
-- key. Never purged: after a message's id is purged, its sequence number is
-- what still recognizes a redelivery. previous_sequence is the number it
-- replaced, which lets one upsert report the gap it closed.
CREATE TABLE {inbox_keys} (
    consumer          TEXT    NOT NULL,
    partition_key     TEXT    NOT NULL,
    last_sequence     INTEGER NOT NULL,
    previous_sequence INTEGER,
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (consumer, partition_key)
);
