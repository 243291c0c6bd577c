-- Forgets a relay that shuts down.
-- Binds: the relay's id.
DELETE FROM {relays} WHERE relay_id = ?;
