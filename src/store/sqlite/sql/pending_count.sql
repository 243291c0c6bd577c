-- Messages waiting to be published (dead letters are elsewhere).
SELECT count(*) FROM {messages};
