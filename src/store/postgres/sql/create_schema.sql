-- Creates the outbox's schema if it is missing.
CREATE SCHEMA IF NOT EXISTS "{schema}"
