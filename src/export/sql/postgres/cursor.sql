-- The cursor a consumer last committed.
--
-- $1 consumer.
SELECT cursor FROM {export_cursors} WHERE consumer = $1;
