-- Pending messages per topic: how many, and the creation time of the
-- oldest, by topic. Reads the messages table once.
SELECT topic, count(*) AS pending, min(created_at) AS oldest
FROM {messages}
GROUP BY topic
ORDER BY topic;
