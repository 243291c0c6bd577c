-- Messages that cannot be sent now leave the claims' path. A claim walks
-- the pending messages in position order and used to re-read, on every
-- claim, each message waiting behind a key whose head is blocked (an
-- ordered topic's dead letter waiting for an operator, a head waiting for
-- its retry) and each message waiting for a retry: a million of them made
-- every claim read a million rows.
--
-- `parked`: held behind a blocked key. A relay's upkeep marks such
-- messages (in bounded batches, a second or so after the block appears);
-- an acknowledgement that lifts a block unparks its key's messages in the
-- same transaction, and the next upkeep unparks the keys an operator
-- freed. `sleeping`: waiting for a
-- retry due more than a moment from now; the acknowledgement that
-- schedules the retry sets it, and the upkeep wakes the message shortly
-- before it is due.
--
-- Claims read through `messages_ready_idx`, which holds only the messages
-- neither parked nor sleeping; they still test each row against the
-- blocks, so a message that arrived behind a block since the last upkeep
-- is held back all the same. `messages_parked_idx` finds a key's parked
-- messages when its block lifts, `messages_sleeping_idx` the messages
-- about to be due; both are empty while nothing is stuck.
--
-- Adding a column with a constant default rewrites nothing; building the
-- indexes reads the table once, under a lock that holds producers back
-- while it lasts (run `migrate()` before the traffic, as for any version).
ALTER TABLE {messages}
    ADD COLUMN parked boolean NOT NULL DEFAULT false,
    ADD COLUMN sleeping boolean NOT NULL DEFAULT false;
CREATE INDEX {prefix}messages_ready_idx ON {messages} (seq)
    WHERE NOT parked AND NOT sleeping;
CREATE INDEX {prefix}messages_parked_idx ON {messages} (partition_key, seq)
    WHERE parked;
CREATE INDEX {prefix}messages_sleeping_idx ON {messages} (available_at)
    WHERE sleeping;

-- A key may be blocked by several failing heads at once: an older dead
-- letter replayed while a newer one still blocks its key. Each head holds
-- the key until it goes through (or is discarded, or an operator lifts
-- the key), so blocks are kept per (key, position) rather than the
-- earliest per key, which forgot the newer head: once the older one went
-- through, the key moved past the newer dead letter.
DO $$
DECLARE pkey text;
BEGIN
    SELECT conname INTO pkey FROM pg_constraint
    WHERE conrelid = '{blocked}'::regclass AND contype = 'p';
    EXECUTE format('ALTER TABLE {blocked} DROP CONSTRAINT %I, '
                   'ADD PRIMARY KEY (partition_key, seq)', pkey);
END $$;
