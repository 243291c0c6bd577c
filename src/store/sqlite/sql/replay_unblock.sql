-- Lifts the blocks that replayed dead letters held on their keys.
-- Binds: the positions that went back, as a JSON array.
DELETE FROM {blocked}
WHERE EXISTS (SELECT 1 FROM {dead_letters} d
              WHERE d.partition_key = {blocked}.partition_key
                AND d.seq = {blocked}.seq
                AND d.seq IN (SELECT value FROM json_each(?)));
