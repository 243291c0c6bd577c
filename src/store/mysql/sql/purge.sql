-- Deletes retained published messages published before the cut-off,
-- oldest first and at most the limit, so one purge stays short.
-- Binds, in order: the cut-off, the limit.
DELETE FROM {published} WHERE published_at < ? ORDER BY published_at LIMIT ?;
