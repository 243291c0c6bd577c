//! What a scenario needs from a backend; each backend's implementation is
//! in the file named after it (`backend/mysql.rs`, `backend/postgres.rs`,
//! `backend/sqlite.rs`).
//!
//! A backend joins the suite with one [`Backend`] impl in a file of its own
//! (its outbox type gets [`TestOutbox`] from one `test_outbox!` line) and
//! one line in the `conformance!` invocation of `main.rs`.
//!
//! The SQL of the implementations is the scenarios' own: business tables written in the
//! caller's transaction, a table in which a relay process records what it
//! delivered (it must survive that process being killed), and a few reads
//! of the crate's tables that the public API has no call for.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox::export::{ChangePage, Cursor};
use outbox::{
    BatchEnqueued, BlockedKey, DeadLetter, DeadLetterFilter, Enqueued, Event, MessageId,
    NewMessage, OutboxMessage, Publisher, Receipt, RelayBuilder, RelayHandle, ReplayReport,
};
use sqlx::pool::PoolOptions;
use sqlx::Transaction;
use uuid::Uuid;

use self::sql::{Arg, SuiteDb};

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

impl Pool {
    /// The options of this pool on a backend whose usual pool has `usual`
    /// connections and whose paused-time pool at most `paused`.
    pub fn options<DB: sqlx::Database>(self, usual: u32, paused: u32) -> PoolOptions<DB> {
        match self {
            Pool::Default => PoolOptions::new().max_connections(usual),
            Pool::Connections(n) => PoolOptions::new().max_connections(n),
            Pool::PausedTime => PoolOptions::new()
                .max_connections(paused)
                .min_connections(4)
                .acquire_timeout(Duration::from_secs(365 * 24 * 3600))
                .idle_timeout(None)
                .max_lifetime(None)
                .test_before_acquire(false),
        }
    }
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
///
/// The scenarios' own tables (`candidates`, `key_counters`, `key_log`,
/// `received`) are written in SQL every database takes, with the column
/// types of [`Backend::UUID`] and [`Backend::SERIAL`]; `key` is reserved
/// in MySQL, so key columns are named `k`.
#[async_trait]
pub trait Backend: Send + Sync + Sized + 'static {
    /// The name of the backend's module in the `conformance!` invocation.
    const NAME: &'static str;
    /// The buckets the key space is hashed into, each leased to one relay.
    /// SQLite has one writer and one bucket: one relay publishes, others
    /// stand by.
    const BUCKETS: usize;

    type Db: SuiteDb;
    type Outbox: TestOutbox<Db = Self::Db>;
    type Builder: OutboxBuilder<Outbox = Self::Outbox>;

    /// The column type that holds a UUID.
    const UUID: &'static str;
    /// The column type of an auto-numbered primary key.
    const SERIAL: &'static str;
    /// The names of the tables of the outboxes in this database (those of
    /// every prefix), in order.
    const TABLES: &'static str;

    /// The pool of the scenarios' own statements (bookkeeping reads, setup).
    fn pool(&self) -> &sqlx::Pool<Self::Db>;

    /// The pool the outbox and the scenarios' transactions use.
    fn app_pool(&self) -> &sqlx::Pool<Self::Db> {
        self.pool()
    }

    /// A new, empty database with `pool`, dropped by [`Backend::close`].
    async fn create_bare(pool: Pool) -> Self;

    /// A new database with `pool`, the default outbox migrated and the
    /// scenarios' business table `candidates` created; dropped by
    /// [`Backend::close`].
    async fn create(pool: Pool) -> Self {
        let db = Self::create_bare(pool).await;
        db.outbox().migrate().await.expect("migrate");
        db.execute("CREATE TABLE candidates (id BIGINT PRIMARY KEY, status TEXT NOT NULL)")
            .await;
        db
    }

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

    /// The builder of the outbox, on the pool the outbox uses.
    fn outbox_builder(&self) -> Self::Builder;

    /// The outbox with the default table names.
    fn outbox(&self) -> Self::Outbox {
        self.outbox_builder().build().expect("the default outbox")
    }

    /// An outbox whose table names start with `prefix`, not migrated; the
    /// builder's error for a bad prefix.
    fn outbox_with_prefix(&self, prefix: &str) -> outbox::Result<Self::Outbox> {
        self.outbox_builder().table_prefix(prefix).build()
    }

    /// The outbox with its builder's `max_payload_bytes` set.
    fn outbox_with_payload_limit(&self, limit: usize) -> outbox::Result<Self::Outbox> {
        self.outbox_builder().max_payload_bytes(limit).build()
    }

    async fn begin(&self) -> Tx<Self> {
        self.app_pool().begin().await.unwrap()
    }

    /// Writes a business row in `tx`.
    async fn insert_candidate(&self, tx: &mut Tx<Self>, id: i64, status: &str) -> sqlx::Result<()> {
        let sql = "INSERT INTO candidates VALUES (?, ?)";
        Self::Db::run_in(tx, sql, &[Arg::Int(id), Arg::Text(status)])
            .await
            .map(drop)
    }

    /// A transaction that has hired candidate `id`: its business row
    /// written, nothing else yet.
    async fn begin_hiring(&self, id: i64) -> Tx<Self> {
        let mut tx = self.begin().await;
        self.insert_candidate(&mut tx, id, "hired")
            .await
            .expect("insert a candidate");
        tx
    }

    /// The table prefix of [`Backend::outbox`].
    const DEFAULT_PREFIX: &'static str;

    /// The database's clock, in the form the crate stores times in.
    const NOW: &'static str;

    /// What a query puts before and after a table's own name (its prefix
    /// and the table) to name one of the crate's tables.
    const QUALIFY: [&'static str; 2] = ["", ""];

    /// The name a query gives the crate's table `table` of the outbox with
    /// `prefix`.
    fn table(prefix: &str, table: &str) -> String {
        let [before, after] = Self::QUALIFY;
        format!("{before}{prefix}{table}{after}")
    }

    /// Runs a query that returns one integer.
    async fn count(&self, sql: &str) -> i64 {
        Self::Db::int(self.pool(), sql).await
    }

    /// Runs a statement that returns no rows, on the scenarios' own
    /// connection (as an operator's SQL would, outside the crate).
    async fn execute(&self, sql: &str) {
        Self::Db::raw(self.pool(), sql).await
    }

    /// Blocks `key` at `position` in the default outbox, as a block left by
    /// an older version of the crate (whose message may be gone) would.
    async fn insert_block(&self, key: &str, position: i64) {
        let blocked = Self::table(Self::DEFAULT_PREFIX, "blocked_keys");
        let sql = format!(
            "INSERT INTO {blocked} (partition_key, seq, since) VALUES (?, ?, {})",
            Self::NOW
        );
        Self::Db::run(self.pool(), &sql, &[Arg::Text(key), Arg::Int(position)])
            .await
            .unwrap();
    }

    /// The committed business rows.
    async fn candidates(&self) -> i64 {
        self.count("SELECT count(*) FROM candidates").await
    }

    /// The tables of the outboxes in this database (those of every prefix).
    async fn tables(&self) -> Vec<String> {
        Self::Db::texts(self.pool(), Self::TABLES).await
    }

    /// Rows in the messages table of the outbox with `prefix`.
    async fn message_rows(&self, prefix: &str) -> i64 {
        let messages = Self::table(prefix, "messages");
        self.count(&format!("SELECT count(*) FROM {messages}"))
            .await
    }

    /// Migrations recorded by the default outbox.
    async fn migrations(&self) -> i64 {
        let migrations = Self::table(Self::DEFAULT_PREFIX, "migrations");
        self.count(&format!("SELECT count(*) FROM {migrations}"))
            .await
    }

    /// Records a migration `version` as applied to the default outbox, as a
    /// newer release of the crate would.
    async fn record_migration(&self, version: i64) {
        let migrations = Self::table(Self::DEFAULT_PREFIX, "migrations");
        self.execute(&format!(
            "INSERT INTO {migrations} (version, applied_at) VALUES ({version}, {})",
            Self::NOW
        ))
        .await;
    }

    /// Moves every retained message of the default outbox `by` into the past.
    async fn backdate_published(&self, by: Duration);

    /// `what` (an aggregate) over the unexpired leases of the default
    /// outbox.
    async fn over_live_leases(&self, what: &str) -> i64 {
        let leases = Self::table(Self::DEFAULT_PREFIX, "leases");
        self.count(&format!(
            "SELECT {what} FROM {leases} WHERE expires_at > {}",
            Self::NOW
        ))
        .await
    }

    /// Leases of the default outbox held by some relay and not expired.
    async fn owned_leases(&self) -> i64 {
        self.over_live_leases("count(owner)").await
    }

    /// The relays holding an unexpired lease of the default outbox.
    async fn lease_owners(&self) -> i64 {
        self.over_live_leases("count(DISTINCT owner)").await
    }

    /// Creates `key_counters` (keys `key-0` .. `key-{keys - 1}`, each at 0)
    /// and `key_log`, where writers number each key's messages in commit
    /// order.
    async fn create_key_counters(&self, keys: usize) {
        self.execute("CREATE TABLE key_counters (k VARCHAR(255) PRIMARY KEY, n BIGINT NOT NULL)")
            .await;
        self.execute(&format!(
            "CREATE TABLE key_log (k VARCHAR(255) NOT NULL, n BIGINT NOT NULL, \
             msg {} NOT NULL, PRIMARY KEY (k, n))",
            Self::UUID
        ))
        .await;
        if keys > 0 {
            let rows: Vec<String> = (0..keys).map(|i| format!("('key-{i}', 0)")).collect();
            self.execute(&format!(
                "INSERT INTO key_counters (k, n) VALUES {}",
                rows.join(", ")
            ))
            .await;
        }
    }

    /// Takes the write lock on `key`'s counter row in `tx`.
    async fn lock_key(&self, tx: &mut Tx<Self>, key: &str) -> sqlx::Result<()> {
        let sql = "SELECT n FROM key_counters WHERE k = ? FOR UPDATE";
        Self::Db::run_in(tx, sql, &[Arg::Text(key)]).await.map(drop)
    }

    /// Counts `key` up in `tx` and logs `message` under the new count.
    async fn log_key(&self, tx: &mut Tx<Self>, key: &str, message: MessageId) -> sqlx::Result<()> {
        // The new count is read back in the same transaction, which holds
        // the row's lock since the update (MySQL has no UPDATE ...
        // RETURNING).
        let sql = "UPDATE key_counters SET n = n + 1 WHERE k = ?";
        Self::Db::run_in(tx, sql, &[Arg::Text(key)]).await?;
        let sql = "INSERT INTO key_log (k, n, msg) SELECT k, n, ? FROM key_counters WHERE k = ?";
        let logged = [Arg::Uuid(message.as_uuid()), Arg::Text(key)];
        Self::Db::run_in(tx, sql, &logged).await.map(drop)
    }

    /// `key_log` as (key, n, message), by key then n.
    async fn key_log(&self) -> Vec<(String, i64, Uuid)> {
        Self::Db::key_log(self.pool(), "SELECT k, n, msg FROM key_log ORDER BY k, n").await
    }

    /// Whether the database aborted a writer to break a deadlock.
    fn is_deadlock(error: &outbox::Error) -> bool;

    /// Creates `received`, where relays record deliveries.
    async fn create_received(&self) {
        self.execute(&format!(
            "CREATE TABLE received (seq {}, id {} NOT NULL, k VARCHAR(255) NOT NULL, \
             n BIGINT NOT NULL, ks BIGINT NOT NULL, relay INT NOT NULL)",
            Self::SERIAL,
            Self::UUID
        ))
        .await;
    }

    /// Records `deliveries` in one statement.
    async fn record(&self, deliveries: &[Delivery]) -> sqlx::Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        // Five parameters a row: a batch of 200 stays far below every
        // database's limit of bound parameters.
        let rows = vec!["(?, ?, ?, ?, ?)"; deliveries.len()].join(", ");
        let sql = format!("INSERT INTO received (id, k, n, ks, relay) VALUES {rows}");
        let args: Vec<Arg<'_>> = deliveries
            .iter()
            .flat_map(|d| {
                [
                    Arg::Uuid(d.id),
                    Arg::Text(&d.key),
                    Arg::Int(d.n),
                    Arg::Int(d.ks),
                    Arg::Int32(d.relay),
                ]
            })
            .collect();
        Self::Db::run(self.pool(), &sql, &args).await
    }

    /// The distinct messages recorded as delivered.
    async fn delivered(&self) -> i64 {
        self.count("SELECT count(DISTINCT id) FROM received").await
    }

    /// Every recorded delivery, in the order recorded.
    async fn deliveries(&self) -> Vec<Delivery> {
        let sql = "SELECT id, k, n, ks, relay FROM received ORDER BY seq";
        Self::Db::deliveries(self.pool(), sql).await
    }
}

/// Waits (up to a minute) until `relay` holds every bucket of backend `B`;
/// `what` names the wait in the timeout's message.
pub async fn every_bucket_held<B: Backend>(relay: &RelayHandle, what: &str) {
    crate::support::eventually(what, || relay.health().leased_buckets == B::BUCKETS).await;
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

    /// `n` fast relays publishing to clones of `publisher`, `batch` at a
    /// time.
    fn fast_relays<P: Publisher + Clone>(
        &self,
        n: usize,
        publisher: &P,
        batch: usize,
    ) -> Vec<outbox::RelayHandle> {
        (0..n)
            .map(|_| {
                let relay = self.fast_relay(publisher.clone()).batch_size(batch);
                relay.spawn().expect("spawn a relay")
            })
            .collect()
    }

    /// Waits up to `within` for the outbox to drain.
    async fn drained(&self, within: Duration) {
        crate::support::wait_for("the outbox drained", within, || async {
            self.pending().await == 0
        })
        .await;
    }

    /// `enqueue` in a transaction of its own; the message's id.
    async fn enqueue_id(&self, message: NewMessage) -> MessageId {
        self.enqueue_alone(message).await.expect("enqueue").id()
    }

    /// The dead letters, once there are exactly `n` of them (waiting up to
    /// a minute).
    async fn dead_letters_when(&self, n: usize) -> Vec<DeadLetter> {
        // Real time, as `wait_for`: a scenario on paused time must not
        // run out of it while the relay works.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let dead = self.dead_letters(100).await.expect("dead_letters");
            if dead.len() == n {
                return dead;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "waited for {n} dead letters; {} so far",
                dead.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
    /// `enqueue` in a transaction of its own.
    async fn enqueue_alone(&self, message: NewMessage) -> outbox::Result<Enqueued>;
    /// `enqueue_batch` in a transaction of its own.
    async fn enqueue_batch_alone(&self, messages: Vec<NewMessage>)
        -> outbox::Result<BatchEnqueued>;
    /// Commits through the outbox, which wakes the relay.
    async fn commit(&self, tx: Transaction<'static, Self::Db>) -> outbox::Result<()>;
    fn wake(&self);
    async fn dead_letters(&self, limit: i64) -> outbox::Result<Vec<DeadLetter>>;
    async fn replay_dead_letter(&self, id: MessageId) -> outbox::Result<()>;
    async fn replay_all_dead_letters(&self) -> outbox::Result<u64>;
    async fn discard_dead_letter(&self, id: MessageId) -> outbox::Result<()>;
    async fn dead_letters_matching(
        &self,
        filter: &DeadLetterFilter,
    ) -> outbox::Result<Vec<DeadLetter>>;
    async fn replay_dead_letters(&self, filter: &DeadLetterFilter) -> outbox::Result<ReplayReport>;
    async fn blocked_keys(&self) -> outbox::Result<Vec<BlockedKey>>;
    async fn unblock(&self, key: &str) -> outbox::Result<bool>;
    async fn pending_count(&self) -> outbox::Result<i64>;
    async fn published(&self, limit: i64) -> outbox::Result<Vec<OutboxMessage>>;
    async fn stats(&self) -> outbox::Result<outbox::StoreStats>;
    async fn topic_stats(&self) -> outbox::Result<Vec<outbox::TopicStats>>;
    async fn stats_and_topics(
        &self,
    ) -> outbox::Result<(outbox::StoreStats, Vec<outbox::TopicStats>)>;
    async fn relays(&self) -> outbox::Result<Vec<outbox::RelayStatus>>;
    async fn log_change(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        change: &outbox::change::Change,
    ) -> outbox::Result<()>;
    async fn record_change(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        topic: &str,
        change: &outbox::change::Change,
    ) -> outbox::Result<Enqueued>;
    async fn snapshot_cursor(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
    ) -> outbox::Result<Cursor>;
    async fn changes_since(&self, consumer: &str, limit: i64) -> outbox::Result<ChangePage>;
    async fn changes_after(&self, cursor: &Cursor, limit: i64) -> outbox::Result<ChangePage>;
    async fn cursor(&self, consumer: &str) -> outbox::Result<Option<Cursor>>;
    async fn commit_cursor(&self, consumer: &str, cursor: &Cursor) -> outbox::Result<()>;
    async fn commit_and_read(
        &self,
        consumer: &str,
        cursor: &Cursor,
        limit: i64,
    ) -> outbox::Result<ChangePage>;
    async fn export_consumers(
        &self,
        max: i64,
    ) -> outbox::Result<Vec<outbox::export::ExportConsumer>>;
}

/// The builder of one backend's outbox, as the scenarios configure it.
pub trait OutboxBuilder: Sized {
    type Outbox;

    fn table_prefix(self, prefix: &str) -> Self;
    fn max_payload_bytes(self, limit: usize) -> Self;
    fn build(self) -> outbox::Result<Self::Outbox>;
}

/// Implements [`OutboxBuilder`] for a builder type by calling its inherent
/// methods of the same names.
macro_rules! outbox_builder {
    ($builder:ty, $outbox:ty) => {
        impl crate::backend::OutboxBuilder for $builder {
            type Outbox = $outbox;

            fn table_prefix(self, prefix: &str) -> Self {
                <$builder>::table_prefix(self, prefix)
            }
            fn max_payload_bytes(self, limit: usize) -> Self {
                <$builder>::max_payload_bytes(self, limit)
            }
            fn build(self) -> ::outbox::Result<$outbox> {
                <$builder>::build(self)
            }
        }
    };
}

/// The inbox of one backend, as the scenarios use it.
#[async_trait]
pub trait TestInbox: std::fmt::Debug + Send + Sync + 'static {
    type Db: sqlx::Database;

    async fn migrate(&self) -> outbox::Result<()>;
    async fn receive(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        consumer: &str,
        message: &OutboxMessage,
    ) -> outbox::Result<Receipt>;
    async fn receive_id(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        consumer: &str,
        id: MessageId,
    ) -> outbox::Result<Receipt>;
    async fn last_sequence(&self, consumer: &str, key: &str) -> outbox::Result<Option<i64>>;
    async fn purge_before(&self, before: DateTime<Utc>, batch: i64) -> outbox::Result<u64>;
}

/// Implements [`TestInbox`] for an inbox type by calling its inherent
/// methods of the same names.
macro_rules! test_inbox {
    ($inbox:ty, $db:ty) => {
        #[::async_trait::async_trait]
        impl crate::backend::TestInbox for $inbox {
            type Db = $db;

            async fn migrate(&self) -> ::outbox::Result<()> {
                <$inbox>::migrate(self).await
            }
            async fn receive(
                &self,
                tx: &mut ::sqlx::Transaction<'static, $db>,
                consumer: &str,
                message: &::outbox::OutboxMessage,
            ) -> ::outbox::Result<::outbox::Receipt> {
                <$inbox>::receive(self, &mut **tx, consumer, message).await
            }
            async fn receive_id(
                &self,
                tx: &mut ::sqlx::Transaction<'static, $db>,
                consumer: &str,
                id: ::outbox::MessageId,
            ) -> ::outbox::Result<::outbox::Receipt> {
                <$inbox>::receive_id(self, &mut **tx, consumer, id).await
            }
            async fn last_sequence(
                &self,
                consumer: &str,
                key: &str,
            ) -> ::outbox::Result<Option<i64>> {
                <$inbox>::last_sequence(self, consumer, key).await
            }
            async fn purge_before(
                &self,
                before: ::chrono::DateTime<::chrono::Utc>,
                batch: i64,
            ) -> ::outbox::Result<u64> {
                <$inbox>::purge_before(self, before, batch).await
            }
        }
    };
}

/// Implements [`TestOutbox`] for an outbox type by calling its inherent
/// methods of the same names.
macro_rules! test_outbox {
    ($outbox:ty, $db:ty) => {
        #[::async_trait::async_trait]
        impl crate::backend::TestOutbox for $outbox {
            type Db = $db;

            fn relay(&self, publisher: impl ::outbox::Publisher) -> ::outbox::RelayBuilder {
                ::outbox::Relay::builder(self.clone(), publisher)
            }
            async fn migrate(&self) -> ::outbox::Result<()> {
                <$outbox>::migrate(self).await
            }
            async fn enqueue(
                &self,
                tx: &mut ::sqlx::Transaction<'static, $db>,
                message: ::outbox::NewMessage,
            ) -> ::outbox::Result<::outbox::Enqueued> {
                <$outbox>::enqueue(self, &mut **tx, message).await
            }
            async fn enqueue_batch(
                &self,
                tx: &mut ::sqlx::Transaction<'static, $db>,
                messages: Vec<::outbox::NewMessage>,
            ) -> ::outbox::Result<::outbox::BatchEnqueued> {
                <$outbox>::enqueue_batch(self, &mut **tx, messages).await
            }
            async fn publish_event<E: ::outbox::Event + Sync>(
                &self,
                tx: &mut ::sqlx::Transaction<'static, $db>,
                event: &E,
            ) -> ::outbox::Result<::outbox::Enqueued> {
                <$outbox>::publish_event(self, &mut **tx, event).await
            }
            async fn enqueue_alone(
                &self,
                message: ::outbox::NewMessage,
            ) -> ::outbox::Result<::outbox::Enqueued> {
                // A transaction of its own, not the pool as executor: behind
                // a pooler in transaction mode a statement outside a
                // transaction may be parsed and bound on two server
                // connections (the README says so to users too).
                let mut tx = self.pool().begin().await?;
                let done = <$outbox>::enqueue(self, &mut *tx, message).await?;
                tx.commit().await?;
                Ok(done)
            }
            async fn enqueue_batch_alone(
                &self,
                messages: Vec<::outbox::NewMessage>,
            ) -> ::outbox::Result<::outbox::BatchEnqueued> {
                let mut tx = self.pool().begin().await?;
                let done = <$outbox>::enqueue_batch(self, &mut *tx, messages).await?;
                tx.commit().await?;
                Ok(done)
            }
            async fn commit(&self, tx: ::sqlx::Transaction<'static, $db>) -> ::outbox::Result<()> {
                <$outbox>::commit(self, tx).await
            }
            fn wake(&self) {
                <$outbox>::wake(self)
            }
            async fn dead_letters(
                &self,
                limit: i64,
            ) -> ::outbox::Result<Vec<::outbox::DeadLetter>> {
                <$outbox>::dead_letters(self, limit).await
            }
            async fn replay_dead_letter(&self, id: ::outbox::MessageId) -> ::outbox::Result<()> {
                <$outbox>::replay_dead_letter(self, id).await
            }
            async fn replay_all_dead_letters(&self) -> ::outbox::Result<u64> {
                <$outbox>::replay_all_dead_letters(self).await
            }
            async fn discard_dead_letter(&self, id: ::outbox::MessageId) -> ::outbox::Result<()> {
                <$outbox>::discard_dead_letter(self, id).await
            }
            async fn dead_letters_matching(
                &self,
                filter: &::outbox::DeadLetterFilter,
            ) -> ::outbox::Result<Vec<::outbox::DeadLetter>> {
                <$outbox>::dead_letters_matching(self, filter).await
            }
            async fn replay_dead_letters(
                &self,
                filter: &::outbox::DeadLetterFilter,
            ) -> ::outbox::Result<::outbox::ReplayReport> {
                <$outbox>::replay_dead_letters(self, filter).await
            }
            async fn blocked_keys(&self) -> ::outbox::Result<Vec<::outbox::BlockedKey>> {
                <$outbox>::blocked_keys(self).await
            }
            async fn unblock(&self, key: &str) -> ::outbox::Result<bool> {
                <$outbox>::unblock(self, key).await
            }
            async fn pending_count(&self) -> ::outbox::Result<i64> {
                <$outbox>::pending_count(self).await
            }
            async fn published(
                &self,
                limit: i64,
            ) -> ::outbox::Result<Vec<::outbox::OutboxMessage>> {
                <$outbox>::published(self, limit).await
            }
            async fn stats(&self) -> ::outbox::Result<::outbox::StoreStats> {
                <$outbox>::stats(self).await
            }
            async fn topic_stats(&self) -> ::outbox::Result<Vec<::outbox::TopicStats>> {
                <$outbox>::topic_stats(self).await
            }
            async fn stats_and_topics(
                &self,
            ) -> ::outbox::Result<(::outbox::StoreStats, Vec<::outbox::TopicStats>)> {
                <$outbox>::stats_and_topics(self).await
            }
            async fn relays(&self) -> ::outbox::Result<Vec<::outbox::RelayStatus>> {
                <$outbox>::relays(self).await
            }
            async fn log_change(
                &self,
                tx: &mut ::sqlx::Transaction<'static, $db>,
                change: &::outbox::change::Change,
            ) -> ::outbox::Result<()> {
                <$outbox>::log_change(self, &mut **tx, change).await
            }
            async fn record_change(
                &self,
                tx: &mut ::sqlx::Transaction<'static, $db>,
                topic: &str,
                change: &::outbox::change::Change,
            ) -> ::outbox::Result<::outbox::Enqueued> {
                <$outbox>::record_change(self, &mut **tx, topic, change).await
            }
            async fn snapshot_cursor(
                &self,
                tx: &mut ::sqlx::Transaction<'static, $db>,
            ) -> ::outbox::Result<::outbox::export::Cursor> {
                <$outbox>::snapshot_cursor(self, &mut **tx).await
            }
            async fn changes_since(
                &self,
                consumer: &str,
                limit: i64,
            ) -> ::outbox::Result<::outbox::export::ChangePage> {
                <$outbox>::changes_since(self, consumer, limit).await
            }
            async fn changes_after(
                &self,
                cursor: &::outbox::export::Cursor,
                limit: i64,
            ) -> ::outbox::Result<::outbox::export::ChangePage> {
                <$outbox>::changes_after(self, cursor, limit).await
            }
            async fn cursor(
                &self,
                consumer: &str,
            ) -> ::outbox::Result<Option<::outbox::export::Cursor>> {
                <$outbox>::cursor(self, consumer).await
            }
            async fn commit_cursor(
                &self,
                consumer: &str,
                cursor: &::outbox::export::Cursor,
            ) -> ::outbox::Result<()> {
                <$outbox>::commit_cursor(self, consumer, cursor).await
            }
            async fn commit_and_read(
                &self,
                consumer: &str,
                cursor: &::outbox::export::Cursor,
                limit: i64,
            ) -> ::outbox::Result<::outbox::export::ChangePage> {
                <$outbox>::commit_and_read(self, consumer, cursor, limit).await
            }
            async fn export_consumers(
                &self,
                max: i64,
            ) -> ::outbox::Result<Vec<::outbox::export::ExportConsumer>> {
                <$outbox>::export_consumers(self, max).await
            }
        }
    };
}

mod mysql;
pub mod postgres;
pub mod sql;
mod sqlite;

pub use mysql::MySql;
pub use postgres::{PgBouncerSession, PgBouncerTransaction, Postgres};
pub use sqlite::Sqlite;
