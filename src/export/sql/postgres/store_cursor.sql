-- Stores a consumer's cursor.
--
-- $1 consumer, $2 cursor.
INSERT INTO {export_cursors} (consumer, cursor) VALUES ($1, $2)
ON CONFLICT (consumer) DO UPDATE
SET cursor = excluded.cursor, updated_at = now();
