//! The SQLite backend of the suite.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use outbox::export::Cursor;
use outbox::{MessageId, Receipt, Result, SqliteInbox, SqliteOutbox, SqliteOutboxBuilder};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use uuid::Uuid;

use super::sql::{Arg, SuiteDb};
use super::{Backend, Pool, Tx};
use crate::consumer_backend::{ConsumerBackend, ExportBackend, InboxBackend};
use crate::support::sqlite::TempDb;

outbox_builder!(SqliteOutboxBuilder, SqliteOutbox);
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
}

#[async_trait]
impl Backend for Sqlite {
    const NAME: &'static str = "sqlite";
    const BUCKETS: usize = 1;

    type Db = sqlx::Sqlite;
    type Outbox = SqliteOutbox;
    type Builder = SqliteOutboxBuilder;
    const NOW: &'static str = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)";
    const DEFAULT_PREFIX: &'static str = "outbox_";
    const UUID: &'static str = "BLOB";
    const SERIAL: &'static str = "INTEGER PRIMARY KEY AUTOINCREMENT";
    const TABLES: &'static str = "SELECT name FROM sqlite_master WHERE type = 'table' \
        AND name NOT LIKE 'sqlite_%' AND name <> 'candidates' ORDER BY 1";

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn create_bare(pool: Pool) -> Self {
        let path = std::env::temp_dir().join(format!("outbox-conformance-{}.db", Uuid::now_v7()));
        // One connection creates the file and switches it to WAL first:
        // the pool's connections opening together would race to change the
        // journal mode of a new file, which can fail with "database is
        // locked" whatever the busy timeout.
        let first = sqlx::ConnectOptions::connect(&Self::connect_options(&path))
            .await
            .expect("create the test database");
        sqlx::Connection::close(first)
            .await
            .expect("close the creating connection");
        let pool = pool
            .options(8, 8)
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

    fn outbox_builder(&self) -> SqliteOutboxBuilder {
        SqliteOutbox::builder(self.pool.clone())
    }

    async fn backdate_published(&self, by: Duration) {
        let micros = by.as_micros();
        self.execute(&format!(
            "UPDATE outbox_published SET published_at = published_at - {micros}"
        ))
        .await;
    }

    async fn lock_key(&self, tx: &mut Tx<Self>, key: &str) -> sqlx::Result<()> {
        // SQLite locks the database, not rows: a write takes its one write
        // lock, which a transaction that has not written yet must wait for.
        let sql = "UPDATE key_counters SET n = n WHERE k = ?";
        sqlx::Sqlite::run_in(tx, sql, &[Arg::Text(key)])
            .await
            .map(drop)
    }

    fn is_deadlock(_: &outbox::Error) -> bool {
        // Transactions that begin with a write queue for the one write lock
        // (for the busy timeout); none is ever aborted to break a cycle.
        false
    }
}

impl ConsumerBackend for Sqlite {}

#[async_trait]
impl InboxBackend for Sqlite {
    type Inbox = SqliteInbox;

    fn inbox(&self) -> SqliteInbox {
        SqliteInbox::new(self.pool.clone())
    }

    async fn receive_id_autocommit(&self, consumer: &str, id: MessageId) -> Result<Receipt> {
        self.inbox().receive_id(&self.pool, consumer, id).await
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
}

#[async_trait]
impl ExportBackend for Sqlite {
    // The transaction of `begin_write` holds the database's write lock
    // already.
    const LOCKING_READ: &'static str = "";

    async fn begin_snapshot(&self) -> Tx<Self> {
        // In WAL mode a transaction reads one snapshot from its first read
        // to its end.
        self.begin().await
    }

    fn foreign_cursor() -> Cursor {
        "pg1|||0".parse().expect("a PostgreSQL cursor")
    }

    async fn begin_write(&self) -> Tx<Self> {
        // Takes the write lock up front: a transaction that read first
        // could not upgrade once another writer committed after its read.
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .expect("BEGIN IMMEDIATE")
    }
}
