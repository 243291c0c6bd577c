-- Messages that cannot be sent now leave the claims' path (see the
-- PostgreSQL migration of the same name): `parked` behind a blocked key,
-- marked by a relay's upkeep and unparked when the block lifts;
-- `sleeping` until shortly before a retry due later than a moment from
-- now. Claims read through `messages_ready_idx`, which holds only the
-- messages neither parked nor sleeping.
ALTER TABLE {messages} ADD COLUMN parked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {messages} ADD COLUMN sleeping INTEGER NOT NULL DEFAULT 0;
CREATE INDEX "{prefix}messages_ready_idx" ON {messages} (seq)
    WHERE parked = 0 AND sleeping = 0;
CREATE INDEX "{prefix}messages_parked_idx" ON {messages} (partition_key, seq)
    WHERE parked = 1;
CREATE INDEX "{prefix}messages_sleeping_idx" ON {messages} (available_at)
    WHERE sleeping = 1;

-- A key may be blocked by several failing heads at once (see the
-- PostgreSQL migration of the same name): blocks are kept per (key,
-- position). SQLite cannot change a primary key, so the table is rebuilt.
CREATE TABLE "{prefix}blocked_keys_rebuilt" (
    partition_key TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    since         INTEGER NOT NULL,
    PRIMARY KEY (partition_key, seq)
);
INSERT INTO "{prefix}blocked_keys_rebuilt" SELECT partition_key, seq, since FROM {blocked};
DROP TABLE {blocked};
ALTER TABLE "{prefix}blocked_keys_rebuilt" RENAME TO "{prefix}blocked_keys";
