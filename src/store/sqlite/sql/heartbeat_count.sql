-- How many other relays are alive.
-- Binds, in order: now (microseconds); the asking relay's id.
SELECT count(*) FROM {relays} WHERE expires_at > ? AND relay_id <> ?;
