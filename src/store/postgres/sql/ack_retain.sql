-- ack_delete.sql for a relay that keeps published messages: they move to
-- the published table, stamped with the relay's clock, their attempts
-- counting this one. Returns the buckets that passed the fence and the
-- number of rows moved.
--
-- $1 relay id, $2 leased buckets (int[]), $3 their epochs (bigint[]),
-- $4 positions to move (bigint[]), $5 their buckets (int[]),
-- $6 keys of numbered messages (text[]), $7 their sequence numbers
-- (bigint[]), $8 their buckets (int[]), $9 published_at.
WITH {ack_fence},
     d AS (
         DELETE FROM {messages} m
         WHERE m.seq = ANY (ARRAY(
             SELECT a.seq FROM unnest($4::bigint[], $5::int[]) a(seq, bucket)
             WHERE a.bucket IN (SELECT bucket FROM fence)))
         RETURNING m.*),
     ins AS (
         INSERT INTO {published} (seq, id, topic, partition_key, event_type,
                                  schema_version, payload, content_type,
                                  headers, created_at, attempts, published_at)
         SELECT seq, id, topic, partition_key, event_type, schema_version,
                payload, content_type, headers, created_at, attempts + 1, $9
         FROM d
         RETURNING seq)
SELECT ARRAY(SELECT bucket FROM fence), (SELECT count(*) FROM ins)
