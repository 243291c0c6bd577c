-- The blocks the replayed dead letters held on their keys (each keyed dead
-- letter blocks its key at its position): unblock.sql lifts them.
-- Binds: the positions that went back ({list}).
SELECT partition_key, seq FROM {dead_letters}
WHERE seq IN ({list}) AND partition_key IS NOT NULL;
