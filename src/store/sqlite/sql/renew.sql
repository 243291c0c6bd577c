-- Extends a lease the relay still holds at its epoch; no row returned means
-- the lease was lost.
-- Binds, in order: expires_at (microseconds), bucket, epoch, owner (the
-- relay's id).
UPDATE {leases} SET expires_at = ?
WHERE bucket = ? AND epoch = ? AND owner = ?
RETURNING bucket, epoch;
