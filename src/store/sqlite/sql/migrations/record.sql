-- Records a migration version as applied.
-- Binds, in order: version, applied_at (microseconds).
INSERT INTO {migrations} (version, applied_at) VALUES (?, ?);
