-- Stores a consumer's cursor (as store_cursor.sql) and reads the next page
-- of the generation it is in (as page.sql), in one statement: a consumer
-- that commits what it applied and reads on pays one round trip.
--
-- $1 to $4 as page.sql, $5 consumer, $6 cursor.
WITH stored AS (
  INSERT INTO {export_cursors} (consumer, cursor) VALUES ($5, $6)
  ON CONFLICT (consumer) DO UPDATE
  SET cursor = excluded.cursor, updated_at = now()
  RETURNING 1)
{change_page};
