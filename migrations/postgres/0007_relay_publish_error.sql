-- A relay whose every publish fails says so in its heartbeat, with the
-- publisher's error, so `outbox status` shows it from another process.
ALTER TABLE {relays} ADD COLUMN IF NOT EXISTS publish_error text;
