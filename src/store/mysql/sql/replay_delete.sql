-- Deletes the dead letters that went back to the outbox.
-- Binds: their positions ({list}).
DELETE FROM {dead_letters} WHERE seq IN ({list});
