-- Sends dead letters that match a filter (fragments/dead_letter_filter.sql)
-- back to the messages, at their original positions with their attempts
-- reset, ahead of any later message of their keys, whose blocks they lift.
--
-- The rule (ReplayReport): a dead letter goes back only while no message
-- with its id is pending, and of several dead letters of one id only the
-- oldest goes back in one call; every other one stays as it was, with its
-- block. The insert decides (ON CONFLICT on the id, which also covers a
-- producer enqueueing the id at this moment), and only what it inserted is
-- deleted from the dead letters and unblocked, so nothing is lost and a
-- pending id never aborts the statement. The claims' low-water mark comes
-- down to the positions it inserted (fragments/lower_floor.sql).
--
-- Returns how many went back, then the positions and ids of the matching
-- dead letters left in place, oldest first.
--
-- $1..$7 the filter, $8 at most this many (NULL: no limit).
WITH cand AS MATERIALIZED (
         SELECT seq, id FROM {dead_letters}
         WHERE {dead_letter_filter}
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
     back AS (SELECT seq FROM ins),
     {lower_floor},
     left_in_place AS (
         SELECT seq, id FROM cand c
         WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.seq = c.seq))
SELECT (SELECT count(*) FROM ins),
       ARRAY(SELECT seq FROM left_in_place ORDER BY seq),
       ARRAY(SELECT id FROM left_in_place ORDER BY seq)
