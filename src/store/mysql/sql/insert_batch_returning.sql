-- As insert_batch_template.sql, on MariaDB, which returns the ids of the
-- rows the insert wrote (not those IGNORE left out).
INSERT IGNORE INTO {messages} (id, topic, partition_key, event_type, schema_version,
                               payload, content_type, headers, created_at)
VALUES {rows}
RETURNING id;
