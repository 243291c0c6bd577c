-- Wakes the relays listening on a channel, in a transaction of its own.
--
-- $1 channel.
SELECT pg_notify($1, '')
