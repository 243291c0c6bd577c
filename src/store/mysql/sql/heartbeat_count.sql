-- How many other relays are alive.
-- Binds: the asking relay's id.
SELECT COUNT(*) FROM {relays} WHERE expires_at > UTC_TIMESTAMP(6) AND relay_id <> ?;
