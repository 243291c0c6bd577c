-- Stores a consumer's cursor (as store_cursor.sql), opens a generation and
-- reads its first page (as open_page.sql), in one statement: a consumer
-- that commits the end of a generation and reads on, as a caught-up one
-- does on every call, pays one statement.
--
-- $1 and $2 as open_page.sql, $3 consumer, $4 cursor.
WITH stored AS (
  INSERT INTO {export_cursors} (consumer, cursor) VALUES ($3, $4)
  ON CONFLICT (consumer) DO UPDATE
  SET cursor = excluded.cursor, updated_at = now()
  RETURNING 1),
{open_change_page};
