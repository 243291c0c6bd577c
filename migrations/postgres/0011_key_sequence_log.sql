-- Per-key sequence numbers as acknowledgements record them: one row per
-- acknowledgement holding the keys it published and each one's last
-- number, where the acknowledgement used to update one row of
-- key_sequences per key on its critical path. A relay folds the rows into
-- key_sequences a few dozen acknowledgements at a time (key_seq_fold.sql),
-- once per key however often the key was published meanwhile; a read of
-- a key's last number takes the greater of its row there and its entries
-- here (key_seq_read.sql). Written by the relay only, never by producers.
CREATE TABLE {key_sequence_log} (
    id      bigint   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    keys    text[]   NOT NULL,
    numbers bigint[] NOT NULL
);
-- Each row lives a few seconds and is read whole: compressing its arrays
-- would cost the acknowledgement more than the bytes it saves.
ALTER TABLE {key_sequence_log}
    ALTER COLUMN keys SET STORAGE EXTERNAL,
    ALTER COLUMN numbers SET STORAGE EXTERNAL;
