-- Lifts the blocks that dead letters hold on their keys.
DELETE FROM {blocked}
WHERE EXISTS (SELECT 1 FROM {dead_letters} d
              WHERE d.partition_key = {blocked}.partition_key
                AND d.seq = {blocked}.seq);
