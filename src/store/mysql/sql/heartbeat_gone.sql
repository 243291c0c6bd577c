-- Forgets relays whose heartbeat expired longer ago than the given time.
-- Binds: that time (microseconds).
DELETE FROM {relays} WHERE expires_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND;
