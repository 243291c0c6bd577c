-- The newest migration version applied; NULL if none.
SELECT max(version) FROM {migrations};
