-- The first step of an acknowledgement that is more than publishing (a
-- retry, a dead letter, a key block lifted): the buckets the relay still
-- holds with the same epoch, locked FOR SHARE so they cannot change hands
-- before the acknowledgement's transaction commits.
--
-- $1 relay id, $2 leased buckets (int[]), $3 their epochs (bigint[]).
WITH fence AS (
    SELECT l.bucket FROM {leases} l
    JOIN unnest($2::int[], $3::bigint[]) o(bucket, epoch)
      ON l.bucket = o.bucket AND l.epoch = o.epoch
    WHERE l.owner = $1
    FOR SHARE OF l)
SELECT bucket FROM fence
