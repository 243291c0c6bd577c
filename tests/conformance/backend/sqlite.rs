//! The SQLite backend of the suite.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use outbox::export::Cursor;
use outbox::{MessageId, OutboxMessage, Receipt, Result, SqliteInbox, SqliteOutbox};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;
use uuid::Uuid;

use super::{Backend, Delivery, Pool, Tx};
use crate::consumer_backend::{parse_doc, ConsumerBackend, ExportBackend, InboxBackend};
use crate::support::sqlite::TempDb;

test_outbox!(SqliteOutbox, sqlx::Sqlite);
test_inbox!(SqliteInbox, sqlx::Sqlite);

/// SQLite: a database file per test in the temporary directory, in WAL
/// mode with a busy timeout, as the crate asks of its users.
pub struct Sqlite {
    pool: SqlitePool,
    path: PathBuf,
    /// Set when this handle created the file, deleted when it drops.
    _created: Option<TempDb>,
}

impl Sqlite {
    fn connect_options(path: &std::path::Path) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
    }

    /// Now, as the crate stores times: microseconds since the Unix epoch.
    fn now_micros() -> i64 {
        chrono::Utc::now().timestamp_micros()
    }
}

#[async_trait]
impl Backend for Sqlite {
    const NAME: &'static str = "sqlite";
    const BUCKETS: usize = 1;

    type Db = sqlx::Sqlite;
    type Outbox = SqliteOutbox;
    const NOW: &'static str = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)";
    const DEFAULT_PREFIX: &'static str = "outbox_";

    fn table(prefix: &str, table: &str) -> String {
        format!("{prefix}{table}")
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(&self.pool).await.unwrap();
    }

    async fn insert_block(&self, key: &str, position: i64) {
        sqlx::query("INSERT INTO outbox_blocked_keys (partition_key, seq, since) VALUES (?, ?, ?)")
            .bind(key)
            .bind(position)
            .bind(Self::now_micros())
            .execute(&self.pool)
            .await
            .unwrap();
    }

    async fn create_bare(pool: Pool) -> Self {
        let path = std::env::temp_dir().join(format!("outbox-conformance-{}.db", Uuid::now_v7()));
        let options = match pool {
            Pool::Default => SqlitePoolOptions::new().max_connections(8),
            Pool::Connections(n) => SqlitePoolOptions::new().max_connections(n),
            Pool::PausedTime => SqlitePoolOptions::new()
                .max_connections(8)
                .min_connections(4)
                .acquire_timeout(Duration::from_secs(365 * 24 * 3600))
                .idle_timeout(None)
                .max_lifetime(None)
                .test_before_acquire(false),
        };
        let pool = options
            .connect_with(Self::connect_options(&path))
            .await
            .expect("open the test database");
        // From here on the file is deleted (with its WAL) when this drops.
        let created = TempDb {
            pool: pool.clone(),
            path: path.clone(),
        };
        Sqlite {
            pool,
            path,
            _created: Some(created),
        }
    }

    fn location(&self) -> String {
        self.path.to_str().expect("a UTF-8 path").to_owned()
    }

    async fn open(location: &str) -> Self {
        let path = PathBuf::from(location);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(Self::connect_options(&path).create_if_missing(false))
            .await
            .expect("open the test database");
        Sqlite {
            pool,
            path,
            _created: None,
        }
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    fn outbox(&self) -> SqliteOutbox {
        SqliteOutbox::new(self.pool.clone())
    }

    fn outbox_with_prefix(&self, prefix: &str) -> outbox::Result<SqliteOutbox> {
        SqliteOutbox::builder(self.pool.clone())
            .table_prefix(prefix)
            .build()
    }

    fn outbox_with_payload_limit(&self, limit: usize) -> outbox::Result<SqliteOutbox> {
        SqliteOutbox::builder(self.pool.clone())
            .max_payload_bytes(limit)
            .build()
    }

    async fn begin(&self) -> Tx<Self> {
        self.pool.begin().await.unwrap()
    }

    async fn insert_candidate(&self, tx: &mut Tx<Self>, id: i64, status: &str) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO candidates VALUES ($1, $2)")
            .bind(id)
            .bind(status)
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    async fn tables(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' AND name <> 'candidates' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn backdate_published(&self, by: Duration) {
        sqlx::query("UPDATE outbox_published SET published_at = published_at - $1")
            .bind(by.as_micros() as i64)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    async fn create_key_counters(&self, keys: usize) {
        sqlx::raw_sql(&format!(
            "CREATE TABLE key_counters (key TEXT PRIMARY KEY, n INTEGER NOT NULL);
             CREATE TABLE key_log (key TEXT NOT NULL, n INTEGER NOT NULL, msg BLOB NOT NULL,
                                   PRIMARY KEY (key, n));
             WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < {})
             INSERT INTO key_counters SELECT 'key-' || i, 0 FROM g;",
            keys - 1
        ))
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn lock_key(&self, tx: &mut Tx<Self>, key: &str) -> sqlx::Result<()> {
        // SQLite locks the database, not rows: a write takes its one write
        // lock, which a transaction that has not written yet must wait for.
        sqlx::query("UPDATE key_counters SET n = n WHERE key = $1")
            .bind(key)
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    async fn log_key(&self, tx: &mut Tx<Self>, key: &str, message: MessageId) -> sqlx::Result<()> {
        let n: i64 =
            sqlx::query_scalar("UPDATE key_counters SET n = n + 1 WHERE key = $1 RETURNING n")
                .bind(key)
                .fetch_one(&mut **tx)
                .await?;
        sqlx::query("INSERT INTO key_log VALUES ($1, $2, $3)")
            .bind(key)
            .bind(n)
            .bind(message.as_uuid())
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    async fn key_log(&self) -> Vec<(String, i64, Uuid)> {
        sqlx::query_as("SELECT key, n, msg FROM key_log ORDER BY key, n")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    fn is_deadlock(_: &outbox::Error) -> bool {
        // Transactions that begin with a write queue for the one write lock
        // (for the busy timeout); none is ever aborted to break a cycle.
        false
    }

    async fn create_received(&self) {
        sqlx::query(
            "CREATE TABLE received (seq INTEGER PRIMARY KEY AUTOINCREMENT, id BLOB NOT NULL, \
             key TEXT NOT NULL, n INTEGER NOT NULL, ks INTEGER NOT NULL, relay INTEGER NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn record(&self, deliveries: &[Delivery]) -> sqlx::Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        // Five parameters a row: a batch of 200 stays far below SQLite's
        // limit of bound parameters.
        let rows = vec!["(?, ?, ?, ?, ?)"; deliveries.len()].join(", ");
        let sql = format!("INSERT INTO received (id, key, n, ks, relay) VALUES {rows}");
        let mut q = sqlx::query(&sql);
        for d in deliveries {
            q = q.bind(d.id).bind(&d.key).bind(d.n).bind(d.ks).bind(d.relay);
        }
        q.execute(&self.pool).await.map(drop)
    }

    async fn deliveries(&self) -> Vec<Delivery> {
        sqlx::query("SELECT id, key, n, ks, relay FROM received ORDER BY seq")
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| Delivery {
                id: r.get(0),
                key: r.get(1),
                n: r.get(2),
                ks: r.get(3),
                relay: r.get(4),
            })
            .collect()
    }
}

#[async_trait]
impl ConsumerBackend for Sqlite {
    async fn select_one(tx: &mut Tx<Self>) -> i32 {
        sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut **tx)
            .await
            .expect("SELECT 1")
    }
}

#[async_trait]
impl InboxBackend for Sqlite {
    type Inbox = SqliteInbox;

    fn inbox(&self) -> SqliteInbox {
        SqliteInbox::new(self.pool.clone())
    }

    fn inbox_table(table: &str) -> String {
        format!("outbox_{table}")
    }

    async fn receive_id_autocommit(&self, consumer: &str, id: MessageId) -> Result<Receipt> {
        self.inbox().receive_id(&self.pool, consumer, id).await
    }

    async fn record_inbox_version(&self, version: i64) {
        sqlx::query("INSERT INTO outbox_inbox_migrations (version, applied_at) VALUES (?, 0)")
            .bind(version)
            .execute(&self.pool)
            .await
            .expect("record an inbox version");
    }

    fn build_inbox(&self, schema: Option<&str>, prefix: &str) -> Result<SqliteInbox> {
        assert!(schema.is_none(), "SQLite has no schemas");
        SqliteInbox::builder(self.pool.clone())
            .table_prefix(prefix)
            .build()
    }

    async fn inbox_relations(&self, schema: Option<&str>, prefix: &str) -> i64 {
        assert!(schema.is_none(), "SQLite has no schemas");
        self.count(&format!(
            "SELECT count(*) FROM sqlite_master WHERE type IN ('table', 'index') AND name IN \
             ('{prefix}inbox_messages', '{prefix}inbox_keys', '{prefix}inbox_migrations', \
             '{prefix}inbox_received_idx')"
        ))
        .await
    }

    async fn create_effects_table(&self) {
        sqlx::query("CREATE TABLE effects (message_id TEXT NOT NULL, consumer TEXT NOT NULL)")
            .execute(&self.pool)
            .await
            .expect("create the effects table");
    }

    async fn record_effect(tx: &mut Tx<Self>, message: &OutboxMessage, consumer: &str) {
        sqlx::query("INSERT INTO effects VALUES (?, ?)")
            .bind(message.id().to_string())
            .bind(consumer)
            .execute(&mut **tx)
            .await
            .expect("record an effect");
    }
}

#[async_trait]
impl ExportBackend for Sqlite {
    async fn begin_snapshot(&self) -> Tx<Self> {
        // In WAL mode a transaction reads one snapshot from its first read
        // to its end.
        self.begin().await
    }

    fn foreign_cursor() -> Cursor {
        "pg1|||0".parse().expect("a PostgreSQL cursor")
    }

    async fn create_entity_table(&self, table: &str) {
        sqlx::query(&format!(
            "CREATE TABLE {table} (key TEXT PRIMARY KEY, doc TEXT NOT NULL)"
        ))
        .execute(&self.pool)
        .await
        .expect("create an entity table");
    }

    async fn begin_write(&self) -> Tx<Self> {
        // Takes the write lock up front: a transaction that read first
        // could not upgrade once another writer committed after its read.
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .expect("BEGIN IMMEDIATE")
    }

    async fn entity_for_update(tx: &mut Tx<Self>, table: &str, key: &str) -> Option<Value> {
        // The transaction holds the database's write lock already.
        let doc: Option<String> =
            sqlx::query_scalar(&format!("SELECT doc FROM {table} WHERE key = ?"))
                .bind(key)
                .fetch_optional(&mut **tx)
                .await
                .expect("read an entity");
        doc.as_deref().map(parse_doc)
    }

    async fn insert_entity(tx: &mut Tx<Self>, table: &str, key: &str, doc: &Value) -> bool {
        sqlx::query(&format!(
            "INSERT INTO {table} (key, doc) VALUES (?, ?) ON CONFLICT DO NOTHING"
        ))
        .bind(key)
        .bind(doc.to_string())
        .execute(&mut **tx)
        .await
        .expect("insert an entity")
        .rows_affected()
            == 1
    }

    async fn put_entity(tx: &mut Tx<Self>, table: &str, key: &str, doc: &Value) {
        sqlx::query(&format!(
            "INSERT INTO {table} (key, doc) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET doc = excluded.doc"
        ))
        .bind(key)
        .bind(doc.to_string())
        .execute(&mut **tx)
        .await
        .expect("put an entity");
    }

    async fn delete_entity(tx: &mut Tx<Self>, table: &str, key: &str) {
        sqlx::query(&format!("DELETE FROM {table} WHERE key = ?"))
            .bind(key)
            .execute(&mut **tx)
            .await
            .expect("delete an entity");
    }

    async fn entities(tx: &mut Tx<Self>, table: &str) -> HashMap<String, Value> {
        let rows: Vec<(String, String)> = sqlx::query_as(&format!("SELECT key, doc FROM {table}"))
            .fetch_all(&mut **tx)
            .await
            .expect("read the entities");
        rows.into_iter().map(|(k, d)| (k, parse_doc(&d))).collect()
    }
}
