-- Parks the given messages if they are still ready, read by primary key
-- (see delete_seqs.sql).
-- Binds: their positions.
UPDATE {messages} SET parked = TRUE
WHERE seq IN ({list}) AND parked = FALSE AND sleeping = FALSE;
