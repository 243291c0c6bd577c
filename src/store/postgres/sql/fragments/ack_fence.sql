-- The first two steps of every one-statement acknowledgement, so that
-- ack_delete.sql and ack_retain.sql fence alike: `fence`, the buckets whose
-- lease is still the relay's with an unchanged epoch, locked FOR SHARE so
-- they cannot change hands until the statement's transaction commits; and
-- `ks`, the per-key sequence numbers of numbered messages, recorded only in
-- the buckets that passed, as one row of the log (key_seq_log.sql).
--
-- $1 relay id, $2 leased buckets (int[]), $3 their epochs (bigint[]),
-- $6 keys of numbered messages (text[]), $7 their sequence numbers
-- (bigint[]), $8 their buckets (int[]).
fence AS (
    SELECT l.bucket FROM {leases} l
    JOIN unnest($2::int[], $3::bigint[]) o(bucket, epoch)
      ON l.bucket = o.bucket AND l.epoch = o.epoch
    WHERE l.owner = $1
    FOR SHARE OF l),
ks AS (
    INSERT INTO {key_sequence_log} (keys, numbers)
    SELECT array_agg(u.k), array_agg(u.n)
    FROM unnest($6::text[], $7::bigint[], $8::int[]) u(k, n, b)
    WHERE u.b IN (SELECT bucket FROM fence)
    HAVING count(*) > 0)
