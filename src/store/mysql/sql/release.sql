-- Gives up a lease the relay still holds at its epoch: it expires at once.
-- Binds, in order: bucket, epoch, owner (the relay's id).
UPDATE {leases} SET owner = NULL, expires_at = '1970-01-01 00:00:00'
WHERE bucket = ? AND epoch = ? AND owner = ?;
