-- Vacuums the messages table now. Run outside a transaction (VACUUM refuses
-- one); SKIP_LOCKED so it never waits behind a lock.
VACUUM (SKIP_LOCKED) {messages}
