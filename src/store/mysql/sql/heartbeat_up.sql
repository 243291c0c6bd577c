-- Records that a relay is alive for the given time, by the database's
-- clock (relays on several hosts share it).
-- Binds, in order: the relay's id; the time to live (microseconds); the
-- publisher's error while every publish fails (or null).
INSERT INTO {relays} (relay_id, expires_at, publish_error)
VALUES (?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, ?)
ON DUPLICATE KEY UPDATE expires_at = VALUES(expires_at),
                        publish_error = VALUES(publish_error);
