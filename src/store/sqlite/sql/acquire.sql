-- Takes expired leases, lowest bucket first. The epoch grows with every
-- hand-over, so the previous holder is fenced.
-- Binds, in order: owner (the relay's id), expires_at (microseconds), now,
-- now again, the most leases to take.
UPDATE {leases} SET owner = ?, epoch = epoch + 1, expires_at = ?
WHERE expires_at < ?
  AND bucket IN (SELECT bucket FROM {leases} WHERE expires_at < ?
                 ORDER BY bucket LIMIT ?)
RETURNING bucket, epoch;
