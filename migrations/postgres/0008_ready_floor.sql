-- The claims' low-water mark: no message a claim could take lies below
-- `seq`, so claims start their walk of messages_ready_idx there rather
-- than at its first entry. While a long transaction elsewhere (a report,
-- a dump under REPEATABLE READ) holds back the horizon, vacuum keeps every
-- message deleted since, and a walk from the first entry visits each of
-- those dead rows on every claim.
--
-- The relays' upkeep raises it (floor_advance.sql), only up to positions
-- every transaction has settled: each pass notes the sequence's last
-- value and the transactions running, and a later pass, once all of those
-- have ended, may move the mark up to that value, or to the first message
-- still ready if that is lower. Whatever puts a message back in the
-- claims' path below the mark (waking, unparking, replaying a dead
-- letter) lowers it in the same transaction, and bumps `version`, so a
-- raise computed before it cannot land after it.
CREATE TABLE {ready_floor} (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq      bigint  NOT NULL,
    version  bigint  NOT NULL
);
INSERT INTO {ready_floor} (seq, version) VALUES (0, 0);
