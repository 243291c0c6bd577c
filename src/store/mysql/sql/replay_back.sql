-- Of the given positions, those pending again (after replay_insert.sql,
-- in its transaction: positions are never shared between a pending
-- message and a dead letter, so these are the ones that went back).
-- Binds: the positions ({list}).
SELECT seq FROM {messages} WHERE seq IN ({list}) ORDER BY seq;
