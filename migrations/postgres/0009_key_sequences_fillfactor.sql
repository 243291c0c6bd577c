-- Leaves half of each page of the per-key numbers free: a numbered
-- acknowledgement updates one row per key, and with room on its page the
-- new version stays there without a new entry in the key index (a HOT
-- update), where full pages would send most updates to another page with
-- an index entry each. Pages written from now on keep the room; existing
-- ones gain it as their rows move.
ALTER TABLE {key_sequences} SET (fillfactor = 50);
