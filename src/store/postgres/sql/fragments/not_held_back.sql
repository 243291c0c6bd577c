-- Whether message `m` may go now as far as its key is concerned: a key
-- without a block, or a message ahead of its key's blocked head and of
-- every parked message of its key. Both tests are probes, each made only
-- if there is a block, or a parked message, at all (see claim.sql).
CASE
    WHEN m.partition_key IS NULL THEN true
    WHEN (SELECT EXISTS (SELECT 1 FROM {blocked}))
         AND EXISTS (SELECT 1 FROM {blocked} k
                     WHERE k.partition_key = m.partition_key
                       AND k.seq < m.seq) THEN false
    WHEN (SELECT EXISTS (SELECT 1 FROM {messages} WHERE parked))
         THEN NOT EXISTS (SELECT 1 FROM {messages} p
                          WHERE p.parked
                            AND p.partition_key = m.partition_key
                            AND p.seq < m.seq)
    ELSE true
END
