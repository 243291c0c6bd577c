-- Messages waiting to be published (dead letters are in their own table).
SELECT count(*) FROM {messages}
