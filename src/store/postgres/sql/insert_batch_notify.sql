-- insert_batch.sql with a pg_notify in the caller's transaction: relays
-- listening on the channel are woken when it commits.
--
-- $1..$8 arrays of one element per message: ids, topics, partition keys,
-- event types, schema versions, payloads, content types, headers (JSON
-- text); $9 any value to take the commit-order locks (NULL: no lock); $10 notification
-- channel.
WITH l AS MATERIALIZED (
         SELECT 1 FROM {key_slots}
         WHERE slot IN (SELECT hashtext(k) & 65535 FROM unnest($3::text[]) k
                        WHERE k IS NOT NULL)
           AND $9 IS NOT NULL
         ORDER BY slot
         FOR NO KEY UPDATE),
     n AS MATERIALIZED (SELECT pg_notify($10, ''))
INSERT INTO {messages} (id, topic, partition_key, event_type, schema_version,
                        payload, content_type, headers)
SELECT u.id, u.topic, u.k, u.et, u.v, u.p, u.ct, u.h::jsonb
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[],
            $6::bytea[], $7::text[], $8::text[])
     AS u(id, topic, k, et, v, p, ct, h)
     CROSS JOIN n
WHERE (SELECT count(*) FROM l) >= 0
ON CONFLICT (id) DO NOTHING
RETURNING id
