-- Sends dead letters that match a filter (as in dead_letters_matching.sql)
-- back to the messages, at their original positions with their attempts
-- reset, ahead of any later message of their keys, whose blocks they lift.
--
-- The rule (ReplayReport): a dead letter goes back only while no message
-- with its id is pending, and of several dead letters of one id only the
-- oldest goes back in one call; every other one stays as it was, with its
-- block. The insert decides (ON CONFLICT on the id, which also covers a
-- producer enqueueing the id at this moment), and only what it inserted is
-- deleted from the dead letters and unblocked, so nothing is lost and a
-- pending id never aborts the statement.
--
-- Returns how many went back, then the positions and ids of the matching
-- dead letters left in place, oldest first.
--
-- $1 id, $2 topic, $3 partition key, $4 text the last error contains,
-- $5 dead at or after, $6 dead before, $7 positions after this, $8 at most
-- this many (NULL: no limit).
WITH cand AS MATERIALIZED (
         SELECT seq, id FROM {dead_letters}
         WHERE ($1::uuid IS NULL OR id = $1)
           AND ($2::text IS NULL OR topic = $2)
           AND ($3::text IS NULL OR partition_key = $3)
           AND ($4::text IS NULL OR strpos(last_error, $4) > 0)
           AND ($5::timestamptz IS NULL OR dead_at >= $5)
           AND ($6::timestamptz IS NULL OR dead_at < $6)
           AND ($7::bigint IS NULL OR seq > $7)
         ORDER BY seq
         LIMIT $8
         FOR UPDATE),
     pick AS (SELECT DISTINCT ON (id) seq FROM cand ORDER BY id, seq),
     ins AS (
         INSERT INTO {messages} (seq, id, topic, partition_key, event_type,
                                 schema_version, payload, content_type,
                                 headers, created_at, attempts)
         SELECT d.seq, d.id, d.topic, d.partition_key, d.event_type,
                d.schema_version, d.payload, d.content_type, d.headers,
                d.created_at, 0
         FROM {dead_letters} d JOIN pick p ON p.seq = d.seq
         ORDER BY d.seq
         ON CONFLICT (id) DO NOTHING
         RETURNING seq, partition_key),
     gone AS (DELETE FROM {dead_letters} d USING ins WHERE d.seq = ins.seq),
     u AS (DELETE FROM {blocked} b USING ins
           WHERE b.partition_key = ins.partition_key AND b.seq = ins.seq),
     left_in_place AS (
         SELECT seq, id FROM cand c
         WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.seq = c.seq))
SELECT (SELECT count(*) FROM ins),
       ARRAY(SELECT seq FROM left_in_place ORDER BY seq),
       ARRAY(SELECT id FROM left_in_place ORDER BY seq)
