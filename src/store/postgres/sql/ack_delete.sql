-- Acknowledges published messages in one statement: checks the relay's
-- leases (fence: the buckets whose epoch is unchanged, locked FOR SHARE so
-- they cannot change hands until this commits), records the per-key
-- sequence numbers of numbered messages, and deletes the messages, all only
-- in the buckets that passed. Returns the buckets that passed and the number
-- of rows deleted.
--
-- $1 relay id, $2 leased buckets (int[]), $3 their epochs (bigint[]),
-- $4 positions to delete (bigint[]), $5 their buckets (int[]),
-- $6 keys of numbered messages (text[]), $7 their sequence numbers
-- (bigint[]), $8 their buckets (int[]).
--
-- ack_retain.sql moves the messages to the published table instead.
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
         RETURNING m.seq)
SELECT ARRAY(SELECT bucket FROM fence), (SELECT count(*) FROM d)
