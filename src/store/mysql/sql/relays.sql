-- The relays with a recorded heartbeat, by id: when it expires, whether
-- it is current, and how many unexpired leases each holds.
SELECT r.relay_id, r.expires_at, r.expires_at > UTC_TIMESTAMP(6) AS alive,
       r.publish_error,
       (SELECT count(*) FROM {leases} l
        WHERE l.owner = r.relay_id AND l.expires_at > UTC_TIMESTAMP(6)) AS leases
FROM {relays} r
ORDER BY r.relay_id;
