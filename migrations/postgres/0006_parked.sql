-- Messages held behind a blocked key leave the claims' path. A claim walks
-- the pending messages in position order and used to re-read, on every
-- claim, each message waiting behind a key whose head is blocked (an
-- ordered topic's dead letter waiting for an operator, a head waiting for
-- its retry): a million of them made every claim read a million rows.
--
-- A relay's upkeep marks such messages `parked` (in bounded batches, a
-- second or so after the block appears), and every statement that lifts a
-- block unparks its key's messages in the same transaction. Claims read
-- through `messages_ready_idx`, which holds only the messages not parked;
-- they still test each row against the blocks, so a message that arrived
-- behind a block since the last upkeep is held back all the same.
-- `messages_parked_idx` finds a key's parked messages when its block lifts;
-- it holds nothing while no key is blocked.
--
-- Adding a column with a constant default rewrites nothing; building the
-- indexes reads the table once, under a lock that holds producers back
-- while it lasts (run `migrate()` before the traffic, as for any version).
ALTER TABLE {messages} ADD COLUMN parked boolean NOT NULL DEFAULT false;
CREATE INDEX {prefix}messages_ready_idx ON {messages} (seq) WHERE NOT parked;
CREATE INDEX {prefix}messages_parked_idx ON {messages} (partition_key, seq) WHERE parked;
