-- Acknowledges published messages in one statement: checks the relay's
-- leases and records the per-key sequence numbers of numbered messages
-- (fragments/ack_fence.sql), and deletes the messages, all only in the
-- buckets that passed. Returns the buckets that passed and the number
-- of rows deleted.
--
-- $1 relay id, $2 leased buckets (int[]), $3 their epochs (bigint[]),
-- $4 positions to delete (bigint[]), $5 their buckets (int[]),
-- $6 keys of numbered messages (text[]), $7 their sequence numbers
-- (bigint[]), $8 their buckets (int[]).
--
-- The positions to delete are gathered into one array first, so the
-- messages are found through the primary key by that array alone, never
-- by a join whose plan depends on the table's statistics: a generic plan
-- made while they said the table was empty (a vacuum after a quiet spell,
-- then a bulk import) joined the positions to a whole scan of the index
-- for each of them, seconds an acknowledgement.
--
-- ack_retain.sql moves the messages to the published table instead.
WITH {ack_fence},
     d AS (
         DELETE FROM {messages} m
         WHERE m.seq = ANY (ARRAY(
             SELECT a.seq FROM unnest($4::bigint[], $5::int[]) a(seq, bucket)
             WHERE a.bucket IN (SELECT bucket FROM fence)))
         RETURNING m.seq)
SELECT ARRAY(SELECT bucket FROM fence), (SELECT count(*) FROM d)
