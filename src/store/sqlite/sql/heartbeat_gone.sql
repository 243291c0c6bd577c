-- Forgets relays whose heartbeat expired before the cut-off.
-- Binds: the cut-off (microseconds).
DELETE FROM {relays} WHERE expires_at < ?;
