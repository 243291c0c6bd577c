-- Deletes retained published messages older than a time, oldest first, a
-- bounded number per call.
--
-- $1 published before this, $2 at most this many.
DELETE FROM {published}
WHERE seq IN (SELECT seq FROM {published} WHERE published_at < $1
              ORDER BY published_at LIMIT $2)
