-- Records that a relay is alive for the given time, by the database's
-- clock (relays on several hosts share it).
-- Binds, in order: the relay's id; the time to live (microseconds).
INSERT INTO {relays} (relay_id, expires_at)
VALUES (?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)
ON DUPLICATE KEY UPDATE expires_at = VALUES(expires_at);
