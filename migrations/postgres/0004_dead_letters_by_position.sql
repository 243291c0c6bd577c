-- Dead letters are keyed by their position alone, as key blocks are: a
-- message id is unique only among pending messages, so a producer may
-- enqueue an id again after its first message was dead-lettered, and the
-- second dead letter must not replace the first (whose block would then
-- name a message that no longer exists). Drops the unique constraint on
-- the id (found by its column, whatever name PostgreSQL gave it) and keeps
-- a plain index for the operator's look-ups by id. Changes no row, so it is
-- safe on a populated table.
DO $$
DECLARE
    c name;
BEGIN
    FOR c IN
        SELECT con.conname
        FROM pg_constraint con
        JOIN pg_attribute a
          ON a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey)
        WHERE con.conrelid = '{dead_letters}'::regclass
          AND con.contype = 'u'
          AND a.attname = 'id'
          AND array_length(con.conkey, 1) = 1
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I',
                       '{dead_letters}'::regclass, c);
    END LOOP;
END $$;
CREATE INDEX {prefix}dead_letters_id_idx ON {dead_letters} (id);
