-- The conditions of a DeadLetterFilter on {dead_letters}, shared by the
-- listing and the replay so both pick the same dead letters. A NULL
-- parameter leaves its condition out; MySQL has no numbered parameters,
-- so each comes twice.
--
-- Binds, in order, each twice: id, topic, partition key, text the last
-- error contains, dead at or after, dead before, positions after this
-- (the keyset cursor); the statement adds ORDER BY seq and LIMIT ?.
(? IS NULL OR id = ?)
AND (? IS NULL OR topic = ?)
AND (? IS NULL OR partition_key = ?)
AND (? IS NULL OR INSTR(last_error, ?) > 0)
AND (? IS NULL OR dead_at >= ?)
AND (? IS NULL OR dead_at < ?)
AND (? IS NULL OR seq > ?)
