-- Checks that a relay still holds a lease at the epoch it claimed under: no
-- row changed means it was fenced. A write as the first statement of the
-- acknowledgement: the transaction holds the write lock from here on.
-- Binds, in order: bucket, owner (the relay's id), epoch.
UPDATE {leases} SET epoch = epoch
WHERE bucket = ? AND owner = ? AND epoch = ?;
