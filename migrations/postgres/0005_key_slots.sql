-- Commit-order locks: one row per slot of the key space. An enqueue takes a
-- row lock (FOR NO KEY UPDATE) on its key's slot, held until the
-- producer's transaction ends; row locks live in the rows, not in the
-- server's shared lock table, so a transaction that enqueues a million keys
-- cannot exhaust it. 65,536 slots keep two keys in one slot (which merely
-- serializes their writers' commits) rare.
CREATE TABLE {key_slots} (
    slot integer PRIMARY KEY
) WITH (fillfactor = 100);
INSERT INTO {key_slots} (slot) SELECT generate_series(0, 65535);
