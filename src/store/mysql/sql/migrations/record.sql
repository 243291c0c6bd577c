-- Records a migration version as applied.
-- Binds: version.
INSERT IGNORE INTO {migrations} (version, applied_at) VALUES (?, UTC_TIMESTAMP(6));
