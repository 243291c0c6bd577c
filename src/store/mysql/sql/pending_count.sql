-- Messages waiting to be published (dead letters are elsewhere).
SELECT COUNT(*) FROM {messages};
