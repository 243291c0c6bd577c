-- Removes a stopping relay's heartbeat, so the others count it gone at once.
--
-- $1 relay id.
DELETE FROM {relays} WHERE relay_id = $1
