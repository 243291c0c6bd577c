-- The newest migration version applied; NULL if none.
SELECT MAX(version) FROM {migrations};
