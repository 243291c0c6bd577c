-- The relays with a recorded heartbeat, by id: when it expires
-- (microseconds), whether it is current, and how many unexpired leases
-- each holds.
-- Binds: now (microseconds).
SELECT r.relay_id, r.expires_at, r.expires_at > ?1 AS alive, r.publish_error,
       (SELECT count(*) FROM {leases} l
        WHERE l.owner = r.relay_id AND l.expires_at > ?1) AS leases
FROM {relays} r
ORDER BY r.relay_id;
