//! What a scenario needs from a backend, and its implementation for each
//! database the crate supports.
//!
//! A backend joins the suite with one [`Backend`] impl (its outbox type gets
//! [`TestOutbox`] from one `test_outbox!` line) and one line in the
//! `conformance!` invocation of `main.rs`.
//!
//! The SQL here is the scenarios' own: business tables written in the
//! caller's transaction, a table in which a relay process records what it
//! delivered (it must survive that process being killed), and a few reads
//! of the crate's tables that the public API has no call for.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use outbox::{
    BatchEnqueued, DeadLetter, Enqueued, Event, MessageId, NewMessage, OutboxMessage, PgOutbox,
    Publisher, Relay, RelayBuilder, SqliteOutbox,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Row, Transaction};
use uuid::Uuid;

use crate::support::pg::TestDb;
use crate::support::sqlite::TempDb;

/// A transaction of backend `B`'s database.
pub type Tx<B> = Transaction<'static, <B as Backend>::Db>;

/// The pool a fresh database is opened with.
#[derive(Debug, Clone, Copy)]
pub enum Pool {
    /// The backend's usual test pool.
    Default,
    /// At most this many connections.
    Connections(u32),
    /// For tests that pause tokio's clock: connections opened up front,
    /// and no timeout, idle limit or ping that a jump of the paused clock
    /// could trip.
    PausedTime,
}

/// One delivery recorded by a relay process (see [`Backend::record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: Uuid,
    pub key: String,
    /// The writer's own per-key count, carried in the payload as `n`.
    pub n: i64,
    /// The relay's per-key sequence number.
    pub ks: i64,
    /// The recording process (0 for relays of the test process itself).
    pub relay: i32,
}

impl Delivery {
    /// What `message`, numbered `n` by its writer, delivered by `relay`.
    pub fn of(message: &OutboxMessage, relay: i32) -> Delivery {
        Delivery {
            id: message.id().as_uuid(),
            key: message.partition_key().unwrap_or("").to_owned(),
            n: message.payload_json::<serde_json::Value>().unwrap()["n"]
                .as_i64()
                .expect("the payload carries n"),
            ks: message.key_sequence().expect("keyed messages are numbered"),
            relay,
        }
    }
}

/// A fresh database of one backend, with a migrated outbox (default table
/// names) and the scenarios' business table `candidates`.
#[async_trait]
pub trait Backend: Send + Sync + Sized + 'static {
    /// The name of the backend's module in the `conformance!` invocation.
    const NAME: &'static str;
    /// The buckets the key space is hashed into, each leased to one relay.
    /// SQLite has one writer and one bucket: one relay publishes, others
    /// stand by.
    const BUCKETS: usize;

    type Db: sqlx::Database;
    type Outbox: TestOutbox<Db = Self::Db>;

    /// A new database with `pool`, dropped by [`Backend::close`].
    async fn create(pool: Pool) -> Self;

    /// A new database with the usual pool.
    async fn fresh() -> Self {
        Self::create(Pool::Default).await
    }

    /// Where another process finds this database: see [`Backend::open`].
    fn location(&self) -> String;

    /// The database at `location`, opened from another process; closing it
    /// leaves the database in place.
    async fn open(location: &str) -> Self;

    /// Drops the database (if this handle created it).
    async fn close(&self);

    /// The outbox with the default table names.
    fn outbox(&self) -> Self::Outbox;

    /// An outbox whose table names start with `prefix`, not migrated; the
    /// builder's error for a bad prefix.
    fn outbox_with_prefix(&self, prefix: &str) -> outbox::Result<Self::Outbox>;

    async fn begin(&self) -> Tx<Self>;

    /// Writes a business row in `tx`.
    async fn insert_candidate(&self, tx: &mut Tx<Self>, id: i64, status: &str) -> sqlx::Result<()>;

    /// The committed business rows.
    async fn candidates(&self) -> i64;

    /// The tables of the outboxes in this database (those of every prefix).
    async fn tables(&self) -> Vec<String>;

    /// Rows in the messages table of the outbox with `prefix`.
    async fn message_rows(&self, prefix: &str) -> i64;

    /// Migrations recorded by the default outbox.
    async fn migrations(&self) -> i64;

    /// Records a migration `version` as applied to the default outbox, as a
    /// newer release of the crate would.
    async fn record_migration(&self, version: i64);

    /// Moves every retained message of the default outbox `by` into the past.
    async fn backdate_published(&self, by: Duration);

    /// Leases of the default outbox held by some relay and not expired.
    async fn owned_leases(&self) -> i64;

    /// The relays holding an unexpired lease of the default outbox.
    async fn lease_owners(&self) -> i64;

    /// Creates `key_counters` (keys `key-0` .. `key-{keys - 1}`, each at 0)
    /// and `key_log`, where writers number each key's messages in commit
    /// order.
    async fn create_key_counters(&self, keys: usize);

    /// Takes the write lock on `key`'s counter row in `tx`.
    async fn lock_key(&self, tx: &mut Tx<Self>, key: &str) -> sqlx::Result<()>;

    /// Counts `key` up in `tx` and logs `message` under the new count.
    async fn log_key(&self, tx: &mut Tx<Self>, key: &str, message: MessageId) -> sqlx::Result<()>;

    /// `key_log` as (key, n, message), by key then n.
    async fn key_log(&self) -> Vec<(String, i64, Uuid)>;

    /// Whether the database aborted a writer to break a deadlock.
    fn is_deadlock(error: &outbox::Error) -> bool;

    /// Creates `received`, where relays record deliveries.
    async fn create_received(&self);

    /// Records `deliveries` in one statement.
    async fn record(&self, deliveries: &[Delivery]) -> sqlx::Result<()>;

    /// The distinct messages recorded as delivered.
    async fn delivered(&self) -> i64;

    /// Every recorded delivery, in the order recorded.
    async fn deliveries(&self) -> Vec<Delivery>;
}

/// The outbox of one backend, as the scenarios use it: writes in the
/// caller's transaction, the commit that wakes the relay, the admin calls.
#[async_trait]
pub trait TestOutbox: Clone + Send + Sync + 'static {
    type Db: sqlx::Database;

    /// `Relay::builder` for this outbox.
    fn relay(&self, publisher: impl Publisher) -> RelayBuilder;

    /// A relay that polls every 20 ms and holds its leases for 3 s.
    fn fast_relay(&self, publisher: impl Publisher) -> RelayBuilder {
        self.relay(publisher)
            .poll_interval(Duration::from_millis(20))
            .lease_ttl(Duration::from_secs(3))
    }

    /// The messages waiting in the outbox.
    async fn pending(&self) -> i64 {
        self.pending_count().await.expect("pending_count")
    }
    async fn migrate(&self) -> outbox::Result<()>;
    async fn enqueue(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        message: NewMessage,
    ) -> outbox::Result<Enqueued>;
    async fn enqueue_batch(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        messages: Vec<NewMessage>,
    ) -> outbox::Result<BatchEnqueued>;
    async fn publish_event<E: Event + Sync>(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        event: &E,
    ) -> outbox::Result<Enqueued>;
    /// `enqueue` on the pool: a transaction of its own.
    async fn enqueue_alone(&self, message: NewMessage) -> outbox::Result<Enqueued>;
    /// `enqueue_batch` on the pool: a transaction of its own.
    async fn enqueue_batch_alone(&self, messages: Vec<NewMessage>)
        -> outbox::Result<BatchEnqueued>;
    /// Commits through the outbox, which wakes the relay.
    async fn commit(&self, tx: Transaction<'static, Self::Db>) -> outbox::Result<()>;
    fn wake(&self);
    async fn dead_letters(&self, limit: i64) -> outbox::Result<Vec<DeadLetter>>;
    async fn replay_dead_letter(&self, id: MessageId) -> outbox::Result<()>;
    async fn replay_all_dead_letters(&self) -> outbox::Result<u64>;
    async fn discard_dead_letter(&self, id: MessageId) -> outbox::Result<()>;
    async fn pending_count(&self) -> outbox::Result<i64>;
    async fn published(&self, limit: i64) -> outbox::Result<Vec<OutboxMessage>>;
}

/// Implements [`TestOutbox`] for an outbox type by calling its inherent
/// methods of the same names.
macro_rules! test_outbox {
    ($outbox:ty, $db:ty) => {
        #[async_trait]
        impl TestOutbox for $outbox {
            type Db = $db;

            fn relay(&self, publisher: impl Publisher) -> RelayBuilder {
                Relay::builder(self.clone(), publisher)
            }
            async fn migrate(&self) -> outbox::Result<()> {
                <$outbox>::migrate(self).await
            }
            async fn enqueue(
                &self,
                tx: &mut Transaction<'static, $db>,
                message: NewMessage,
            ) -> outbox::Result<Enqueued> {
                <$outbox>::enqueue(self, &mut **tx, message).await
            }
            async fn enqueue_batch(
                &self,
                tx: &mut Transaction<'static, $db>,
                messages: Vec<NewMessage>,
            ) -> outbox::Result<BatchEnqueued> {
                <$outbox>::enqueue_batch(self, &mut **tx, messages).await
            }
            async fn publish_event<E: Event + Sync>(
                &self,
                tx: &mut Transaction<'static, $db>,
                event: &E,
            ) -> outbox::Result<Enqueued> {
                <$outbox>::publish_event(self, &mut **tx, event).await
            }
            async fn enqueue_alone(&self, message: NewMessage) -> outbox::Result<Enqueued> {
                <$outbox>::enqueue(self, self.pool(), message).await
            }
            async fn enqueue_batch_alone(
                &self,
                messages: Vec<NewMessage>,
            ) -> outbox::Result<BatchEnqueued> {
                <$outbox>::enqueue_batch(self, self.pool(), messages).await
            }
            async fn commit(&self, tx: Transaction<'static, $db>) -> outbox::Result<()> {
                <$outbox>::commit(self, tx).await
            }
            fn wake(&self) {
                <$outbox>::wake(self)
            }
            async fn dead_letters(&self, limit: i64) -> outbox::Result<Vec<DeadLetter>> {
                <$outbox>::dead_letters(self, limit).await
            }
            async fn replay_dead_letter(&self, id: MessageId) -> outbox::Result<()> {
                <$outbox>::replay_dead_letter(self, id).await
            }
            async fn replay_all_dead_letters(&self) -> outbox::Result<u64> {
                <$outbox>::replay_all_dead_letters(self).await
            }
            async fn discard_dead_letter(&self, id: MessageId) -> outbox::Result<()> {
                <$outbox>::discard_dead_letter(self, id).await
            }
            async fn pending_count(&self) -> outbox::Result<i64> {
                <$outbox>::pending_count(self).await
            }
            async fn published(&self, limit: i64) -> outbox::Result<Vec<OutboxMessage>> {
                <$outbox>::published(self, limit).await
            }
        }
    };
}

test_outbox!(PgOutbox, sqlx::Postgres);
test_outbox!(SqliteOutbox, sqlx::Sqlite);

/// PostgreSQL: a database per test on the server at `OUTBOX_TEST_PG`.
pub struct Postgres {
    pool: PgPool,
    url: String,
    /// Set when this handle created the database, which `close` drops.
    created: Mutex<Option<TestDb>>,
}

#[async_trait]
impl Backend for Postgres {
    const NAME: &'static str = "postgres";
    const BUCKETS: usize = 64;

    type Db = sqlx::Postgres;
    type Outbox = PgOutbox;

    async fn create(pool: Pool) -> Self {
        let options = match pool {
            Pool::Default => PgPoolOptions::new().max_connections(20),
            Pool::Connections(n) => PgPoolOptions::new().max_connections(n),
            Pool::PausedTime => PgPoolOptions::new()
                .max_connections(10)
                .min_connections(4)
                .acquire_timeout(Duration::from_secs(365 * 24 * 3600))
                .idle_timeout(None)
                .max_lifetime(None)
                .test_before_acquire(false),
        };
        let db = TestDb::with_options(options).await;
        PgOutbox::new(db.pool.clone())
            .migrate()
            .await
            .expect("migrate");
        sqlx::query("CREATE TABLE candidates (id bigint PRIMARY KEY, status text NOT NULL)")
            .execute(&db.pool)
            .await
            .unwrap();
        Postgres {
            pool: db.pool.clone(),
            url: db.url(),
            created: Mutex::new(Some(db)),
        }
    }

    fn location(&self) -> String {
        self.url.clone()
    }

    async fn open(location: &str) -> Self {
        let options: PgConnectOptions = location.parse().expect("a PostgreSQL URL");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .expect("connect to the test database");
        Postgres {
            pool,
            url: location.to_owned(),
            created: Mutex::new(None),
        }
    }

    async fn close(&self) {
        let created = self.created.lock().unwrap().take();
        match created {
            Some(db) => db.drop().await,
            None => self.pool.close().await,
        }
    }

    fn outbox(&self) -> PgOutbox {
        PgOutbox::new(self.pool.clone())
    }

    fn outbox_with_prefix(&self, prefix: &str) -> outbox::Result<PgOutbox> {
        PgOutbox::builder(self.pool.clone())
            .table_prefix(prefix)
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

    async fn candidates(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM candidates")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn tables(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'outbox' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn message_rows(&self, prefix: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM outbox.{prefix}messages"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn migrations(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox.migrations")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn record_migration(&self, version: i64) {
        sqlx::query("INSERT INTO outbox.migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    async fn backdate_published(&self, by: Duration) {
        sqlx::query(
            "UPDATE outbox.published SET published_at = published_at - make_interval(secs => $1)",
        )
        .bind(by.as_secs_f64())
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn owned_leases(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM outbox.leases WHERE owner IS NOT NULL AND expires_at > now()",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn lease_owners(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(DISTINCT owner) FROM outbox.leases WHERE expires_at > now()",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn create_key_counters(&self, keys: usize) {
        sqlx::raw_sql(&format!(
            "CREATE TABLE key_counters (key text PRIMARY KEY, n bigint NOT NULL);
             CREATE TABLE key_log (key text NOT NULL, n bigint NOT NULL, msg uuid NOT NULL,
                                   PRIMARY KEY (key, n));
             INSERT INTO key_counters SELECT 'key-' || g, 0 FROM generate_series(0, {}) g;",
            keys - 1
        ))
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn lock_key(&self, tx: &mut Tx<Self>, key: &str) -> sqlx::Result<()> {
        sqlx::query("SELECT n FROM key_counters WHERE key = $1 FOR UPDATE")
            .bind(key)
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    async fn log_key(&self, tx: &mut Tx<Self>, key: &str, message: MessageId) -> sqlx::Result<()> {
        sqlx::query(
            "WITH c AS (UPDATE key_counters SET n = n + 1 WHERE key = $1 \
             RETURNING n) INSERT INTO key_log SELECT $1, n, $2 FROM c",
        )
        .bind(key)
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

    fn is_deadlock(error: &outbox::Error) -> bool {
        match error {
            outbox::Error::Database(sqlx::Error::Database(d)) => {
                d.code().as_deref() == Some("40P01")
            }
            _ => false,
        }
    }

    async fn create_received(&self) {
        sqlx::query(
            "CREATE TABLE received (seq bigserial PRIMARY KEY, id uuid NOT NULL, \
             key text NOT NULL, n bigint NOT NULL, ks bigint NOT NULL, relay int NOT NULL, \
             at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn record(&self, deliveries: &[Delivery]) -> sqlx::Result<()> {
        let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
        let keys: Vec<&str> = deliveries.iter().map(|d| d.key.as_str()).collect();
        let ns: Vec<i64> = deliveries.iter().map(|d| d.n).collect();
        let kss: Vec<i64> = deliveries.iter().map(|d| d.ks).collect();
        let relays: Vec<i32> = deliveries.iter().map(|d| d.relay).collect();
        sqlx::query(
            "INSERT INTO received (id, key, n, ks, relay) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::int[])",
        )
        .bind(ids)
        .bind(keys)
        .bind(ns)
        .bind(kss)
        .bind(relays)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    async fn delivered(&self) -> i64 {
        sqlx::query_scalar("SELECT count(DISTINCT id) FROM received")
            .fetch_one(&self.pool)
            .await
            .unwrap()
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

    async fn candidates(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM candidates")
            .fetch_one(&self.pool)
            .await
            .unwrap()
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

    async fn message_rows(&self, prefix: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {prefix}messages"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn migrations(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox_migrations")
            .fetch_one(&self.pool)
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

    async fn delivered(&self) -> i64 {
        sqlx::query_scalar("SELECT count(DISTINCT id) FROM received")
            .fetch_one(&self.pool)
            .await
            .unwrap()
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
