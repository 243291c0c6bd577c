-- Records a migration version as applied, at the database's clock
-- (microseconds since the epoch).
-- Binds: version.
INSERT INTO {migrations} (version, applied_at)
VALUES (?, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
