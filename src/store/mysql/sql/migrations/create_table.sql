-- The table of applied migration versions.
CREATE TABLE IF NOT EXISTS {migrations} (
    version    BIGINT      NOT NULL,
    applied_at DATETIME(6) NOT NULL,
    PRIMARY KEY (version)
) ENGINE = InnoDB;
