-- Creates the schema if it is missing.
CREATE SCHEMA IF NOT EXISTS "{schema}"
