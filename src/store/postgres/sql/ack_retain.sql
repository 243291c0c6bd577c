-- ack_delete.sql for a relay that keeps published messages: they move to
-- the published table, stamped with the relay's clock, their attempts
-- counting this one. Returns the buckets that passed the fence and the
-- number of rows moved.
--
-- $1 relay id, $2 leased buckets (int[]), $3 their epochs (bigint[]),
-- $4 positions to move (bigint[]), $5 their buckets (int[]),
-- $6 keys of numbered messages (text[]), $7 their sequence numbers
-- (bigint[]), $8 their buckets (int[]), $9 published_at.
WITH fence AS (
         SELECT l.bucket FROM {leases} l
         JOIN unnest($2::int[], $3::bigint[]) o(bucket, epoch)
           ON l.bucket = o.bucket AND l.epoch = o.epoch
         WHERE l.owner = $1
         FOR SHARE OF l),
     ks AS (
         INSERT INTO {key_sequences} (partition_key, last_sequence)
         SELECT u.k, max(u.n)
         FROM unnest($6::text[], $7::bigint[], $8::int[]) u(k, n, b)
         WHERE u.b IN (SELECT bucket FROM fence)
         GROUP BY u.k
         ON CONFLICT (partition_key) DO UPDATE
         SET last_sequence = GREATEST({key_sequences}.last_sequence,
                                      excluded.last_sequence),
             updated_at = now()),
     d AS (
         DELETE FROM {messages} m
         USING unnest($4::bigint[], $5::int[]) a(seq, bucket)
         WHERE m.seq = a.seq AND a.bucket IN (SELECT bucket FROM fence)
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
