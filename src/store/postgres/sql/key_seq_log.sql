-- Records the last published per-key sequence number of each key (inside a
-- fenced acknowledgement) as one row of the log, which key_seq_fold.sql
-- folds into key_sequences; a number never goes back, as readers take a
-- key's greatest.
--
-- $1 keys (text[]), $2 sequence numbers (bigint[]).
INSERT INTO {key_sequence_log} (keys, numbers) VALUES ($1, $2)
