//! The SQLite backend of the suite.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use outbox::{MessageId, SqliteOutbox};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;
use uuid::Uuid;

use super::{Backend, Delivery, Pool, Tx};
use crate::support::sqlite::TempDb;

test_outbox!(SqliteOutbox, sqlx::Sqlite);

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

    async fn create(pool: Pool) -> Self {
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
        SqliteOutbox::new(pool.clone())
            .migrate()
            .await
            .expect("migrate");
        sqlx::query("CREATE TABLE candidates (id INTEGER PRIMARY KEY, status TEXT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
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

    async fn record_migration(&self, version: i64) {
        sqlx::query("INSERT INTO outbox_migrations (version, applied_at) VALUES ($1, 0)")
            .bind(version)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    async fn backdate_published(&self, by: Duration) {
        sqlx::query("UPDATE outbox_published SET published_at = published_at - $1")
            .bind(by.as_micros() as i64)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    async fn owned_leases(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM outbox_leases WHERE owner IS NOT NULL AND expires_at > $1",
        )
        .bind(Self::now_micros())
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn lease_owners(&self) -> i64 {
        sqlx::query_scalar("SELECT count(DISTINCT owner) FROM outbox_leases WHERE expires_at > $1")
            .bind(Self::now_micros())
            .fetch_one(&self.pool)
            .await
            .unwrap()
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
