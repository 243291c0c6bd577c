-- Records a migration version as applied.
--
-- $1 version.
INSERT INTO {migrations} (version) VALUES ($1)
