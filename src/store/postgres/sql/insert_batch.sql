-- Writes many messages in one statement, in array order, after taking the
-- commit-order lock of each distinct partition key: row locks on their
-- slots (see insert.sql), taken in slot order so two batches sharing keys
-- cannot deadlock, and however many keys, no entry in the server's shared
-- lock table. MATERIALIZED and the count over l make the locks come before
-- the insert. Returns the ids actually inserted; the others were already
-- present. With a channel, it carries a pg_notify as insert.sql does.
--
-- $1..$8 arrays of one element per message: ids, topics, partition keys,
-- event types, schema versions, payloads, content types, headers (JSON
-- text); $9 any value to take the commit-order locks (NULL: no lock);
-- $10 notification channel (NULL: none).
-- x gives the transaction its id before the insert draws a position
-- (pg_current_xact_id, PostgreSQL 13 and later): a transaction that holds
-- a position not yet committed then has an older id than any transaction
-- given one after the draw, which the claims' low-water mark relies on
-- (floor_xid.sql, floor_advance.sql).
WITH l AS MATERIALIZED (
         SELECT 1 FROM {key_slots}
         WHERE slot IN (SELECT hashtext(k) & 65535 FROM unnest($3::text[]) k
                        WHERE k IS NOT NULL)
           AND $9 IS NOT NULL
         ORDER BY slot
         FOR NO KEY UPDATE),
     n AS MATERIALIZED (SELECT pg_notify($10::text, '') WHERE $10::text IS NOT NULL),
     x AS MATERIALIZED (SELECT pg_current_xact_id())
INSERT INTO {messages} (id, topic, partition_key, event_type, schema_version,
                        payload, content_type, headers)
SELECT u.id, u.topic, u.k, u.et, u.v, u.p, u.ct, u.h::jsonb
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[],
            $6::bytea[], $7::text[], $8::text[])
     AS u(id, topic, k, et, v, p, ct, h)
WHERE (SELECT count(*) FROM l) + (SELECT count(*) FROM n) + (SELECT count(*) FROM x) >= 0
ON CONFLICT (id) DO NOTHING
RETURNING id
