-- The newest migration version applied (NULL: none).
SELECT max(version) FROM {migrations}
