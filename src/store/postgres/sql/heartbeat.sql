-- Records the relay as alive for a time to live, forgets relays silent for
-- ten of them, and returns how many relays are alive. The relay counts
-- itself as the 1: the main query does not see the row its own CTE writes.
--
-- $1 relay id, $2 time to live in seconds (float8), $3 the publisher's
-- error while every publish fails (or null).
WITH up AS (
         INSERT INTO {relays} (relay_id, expires_at, publish_error)
         VALUES ($1, now() + make_interval(secs => $2), $3)
         ON CONFLICT (relay_id) DO UPDATE
         SET expires_at = excluded.expires_at, publish_error = excluded.publish_error
         RETURNING 1),
     gone AS (
         DELETE FROM {relays}
         WHERE expires_at < now() - make_interval(secs => $2 * 10)
         RETURNING 1)
SELECT 1 + count(*) FROM {relays} WHERE expires_at > now() AND relay_id <> $1
