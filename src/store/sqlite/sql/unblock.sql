-- Lifts the blocks that the given messages hold on their keys.
-- Binds: [[key, seq], ...] as JSON.
DELETE FROM {blocked}
WHERE EXISTS (SELECT 1 FROM json_each(?) u
              WHERE json_extract(u.value, '$[0]') = {blocked}.partition_key
                AND json_extract(u.value, '$[1]') = {blocked}.seq);
