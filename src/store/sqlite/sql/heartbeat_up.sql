-- Records that a relay is alive until the given time.
-- Binds, in order: the relay's id; expires_at (microseconds); the
-- publisher's error while every publish fails (or null).
INSERT INTO {relays} (relay_id, expires_at, publish_error)
VALUES (?, ?, ?)
ON CONFLICT (relay_id) DO UPDATE
SET expires_at = excluded.expires_at, publish_error = excluded.publish_error;
