-- Records that a relay is alive until the given time.
-- Binds, in order: the relay's id; expires_at (microseconds).
INSERT INTO {relays} (relay_id, expires_at)
VALUES (?, ?)
ON CONFLICT (relay_id) DO UPDATE SET expires_at = excluded.expires_at;
