lowered AS (
         UPDATE {ready_floor}
         SET seq = LEAST(seq, (SELECT min(seq) FROM back)), version = version + 1
         WHERE only_row AND EXISTS (SELECT 1 FROM back))
