-- Lifts the block that one dead letter holds on its key.
-- Binds: the message id.
DELETE FROM {blocked}
WHERE EXISTS (SELECT 1 FROM {dead_letters} d
              WHERE d.partition_key = {blocked}.partition_key
                AND d.seq = {blocked}.seq
                AND d.id = ?);
