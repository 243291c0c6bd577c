//! The consumer side of a backend, as the inbox and export scenarios see
//! it: a fresh database of its own holding an outbox (with a relay to
//! publish real messages), an inbox, the change log and the consumer's own
//! tables, and the few statements whose SQL differs between databases.
//!
//! Scenarios are generic functions over [`InboxBackend`] and
//! [`ExportBackend`]; [`consumer_scenarios!`] turns each into one test per
//! backend. A new backend implements the three traits below for its
//! database and adds one line to that macro.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox::change::Change;
use outbox::export::{ChangePage, Cursor};
use outbox::{
    MessageId, NewMessage, OutboxMessage, PgInbox, PgOutbox, Publisher, Receipt, Relay,
    RelayBuilder, Result, SqliteInbox, SqliteOutbox,
};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Sqlite};

use crate::backend::postgres::{BouncerSession, BouncerTransaction, Direct, Route};
use crate::support::pg::TestDb;
use crate::support::sqlite::TempDb;

/// A transaction in backend `B`'s database.
pub(crate) type Tx<B> = sqlx::Transaction<'static, <B as ConsumerBackend>::Db>;

/// A database of one backend, made for one test and holding the crate's
/// objects with their default names (an outbox and an inbox, not migrated
/// until a scenario asks).
#[async_trait]
pub(crate) trait ConsumerBackend: Send + Sync + Sized + 'static {
    /// The sqlx database type.
    type Db: sqlx::Database;

    /// A new, empty database with a pool of `connections`.
    async fn fresh(connections: u32) -> Self;

    /// Drops the database.
    async fn finish(self);

    /// Begins a transaction.
    async fn begin(&self) -> Tx<Self>;

    /// Runs `SELECT 1` in `tx`: a transaction aborted by an error would
    /// refuse it.
    async fn select_one(tx: &mut Tx<Self>) -> i32;

    /// Runs a query that returns one integer.
    async fn count(&self, sql: &str) -> i64;

    /// Creates or upgrades the outbox.
    async fn migrate_outbox(&self) -> Result<()>;

    /// A relay over this database's outbox.
    fn relay<P: Publisher>(&self, publisher: P) -> RelayBuilder;

    /// Enqueues `message` in a transaction of its own and commits it
    /// through the outbox (which wakes a relay in this process).
    async fn enqueue_committed(&self, message: NewMessage);

    /// How many messages wait in the outbox.
    async fn pending(&self) -> i64;
}

/// The inbox of a [`ConsumerBackend`].
#[async_trait]
pub(crate) trait InboxBackend: ConsumerBackend {
    /// An inbox with names of the caller's choice.
    type Inbox: std::fmt::Debug + Send + Sync + 'static;

    /// The name to query one of the default inbox's tables by
    /// (`inbox_messages`, `inbox_keys`, `inbox_migrations`).
    fn inbox_table(table: &str) -> String;

    /// Creates or upgrades the default inbox.
    async fn migrate_inbox(&self) -> Result<()>;

    /// `receive` on the default inbox.
    async fn receive(
        &self,
        tx: &mut Tx<Self>,
        consumer: &str,
        message: &OutboxMessage,
    ) -> Result<Receipt>;

    /// `receive_id` on the default inbox, in `tx`.
    async fn receive_id(&self, tx: &mut Tx<Self>, consumer: &str, id: MessageId)
        -> Result<Receipt>;

    /// `receive_id` on the default inbox, outside a transaction.
    async fn receive_id_autocommit(&self, consumer: &str, id: MessageId) -> Result<Receipt>;

    /// `last_sequence` of the default inbox.
    async fn last_sequence(&self, consumer: &str, key: &str) -> Result<Option<i64>>;

    /// `purge_before` of the default inbox.
    async fn purge_inbox(&self, before: DateTime<Utc>, batch: i64) -> Result<u64>;

    /// Records, as a release newer than this crate would, that the default
    /// inbox's tables are at `version`.
    async fn record_inbox_version(&self, version: i64);

    /// Builds an inbox in `schema` (`None`: the default) with table names
    /// prefixed by `prefix`. Only backends with schemas take `Some`: the
    /// scenarios that pass one are left out for the others.
    fn build_inbox(&self, schema: Option<&str>, prefix: &str) -> Result<Self::Inbox>;

    /// Creates or upgrades `inbox`'s tables.
    async fn migrate_built_inbox(inbox: &Self::Inbox) -> Result<()>;

    /// How many of an inbox's relations (its three tables and the index on
    /// receipt times) exist in `schema` (`None`: the default) with
    /// `prefix`.
    async fn inbox_relations(&self, schema: Option<&str>, prefix: &str) -> i64;

    /// Creates the consumer's `effects (message_id, consumer)` table.
    async fn create_effects_table(&self);

    /// Inserts one row into `effects` in `tx`.
    async fn record_effect(tx: &mut Tx<Self>, message: &OutboxMessage, consumer: &str);
}

/// The change log of a [`ConsumerBackend`], and tables of entities
/// (`key` text primary key, `doc` a JSON document) for sources and
/// replicas.
#[async_trait]
pub(crate) trait ExportBackend: ConsumerBackend {
    /// `log_change` in `tx`.
    async fn log_change(&self, tx: &mut Tx<Self>, change: &Change) -> Result<()>;

    /// `record_change` in `tx`.
    async fn record_change(&self, tx: &mut Tx<Self>, topic: &str, change: &Change) -> Result<()>;

    /// `changes_since`.
    async fn changes_since(&self, consumer: &str, limit: i64) -> Result<ChangePage>;

    /// `changes_after`.
    async fn changes_after(&self, cursor: &Cursor, limit: i64) -> Result<ChangePage>;

    /// `cursor`.
    async fn cursor(&self, consumer: &str) -> Result<Option<Cursor>>;

    /// `commit_cursor`.
    async fn commit_cursor(&self, consumer: &str, cursor: &Cursor) -> Result<()>;

    /// Begins a transaction whose reads all see one snapshot, as a new
    /// consumer's copy of the source needs.
    async fn begin_snapshot(&self) -> Tx<Self>;

    /// `snapshot_cursor` in `tx`.
    async fn snapshot_cursor(&self, tx: &mut Tx<Self>) -> Result<Cursor>;

    /// A well-formed cursor of another backend.
    fn foreign_cursor() -> Cursor;

    /// Creates an entity table named `table`.
    async fn create_entity_table(&self, table: &str);

    /// Begins a transaction that reads an entity and then writes it.
    async fn begin_write(&self) -> Tx<Self>;

    /// The entity `key` of `table`, locked until `tx` ends.
    async fn entity_for_update(tx: &mut Tx<Self>, table: &str, key: &str) -> Option<Value>;

    /// Inserts the entity unless `key` exists; whether it did.
    async fn insert_entity(tx: &mut Tx<Self>, table: &str, key: &str, doc: &Value) -> bool;

    /// Inserts or replaces the entity.
    async fn put_entity(tx: &mut Tx<Self>, table: &str, key: &str, doc: &Value);

    /// Deletes the entity.
    async fn delete_entity(tx: &mut Tx<Self>, table: &str, key: &str);

    /// Every entity of `table` as `tx` sees them.
    async fn entities(tx: &mut Tx<Self>, table: &str) -> HashMap<String, Value>;
}

/// Generates, for each backend, a module (`postgres`, `sqlite`) with one
/// test per scenario named after it: a scenario is an
/// `async fn name<B: ...>()` in the invoking module, generic over the
/// backend traits it needs. `name except backend` leaves a scenario out for
/// the backends named, where it truly cannot apply; say why beside it.
///
/// Every test runs on a two-thread runtime, as services do.
macro_rules! consumer_scenarios {
    ($($scenario:ident $(except $($skip:ident)+)?),* $(,)?) => {
        // One line per backend: the module name and the type. `$` goes in
        // as a token so that the arm below can define a macro of its own.
        consumer_scenarios!(@backend ($) postgres crate::consumer_backend::PgConsumer;
            $($scenario [$($($skip)+)?]),*);
        consumer_scenarios!(@backend ($) sqlite crate::consumer_backend::SqliteConsumer;
            $($scenario [$($($skip)+)?]),*);
        consumer_scenarios!(@backend ($) pgbouncer_session
            crate::consumer_backend::PgBouncerSessionConsumer;
            $($scenario [$($($skip)+)?]),*);
        consumer_scenarios!(@backend ($) pgbouncer_transaction
            crate::consumer_backend::PgBouncerTransactionConsumer;
            $($scenario [$($($skip)+)?]),*);
    };
    (@backend ($d:tt) $backend:ident $ty:ty; $($scenario:ident [$($skip:ident)*]),*) => {
        mod $backend {
            $(
                // A matcher per scenario: the backends named in its
                // `except` list expand to nothing, any other to the test.
                macro_rules! unless_skipped {
                    $( ($skip $d($d test:tt)*) => {}; )*
                    ($d other:ident $d($d test:tt)*) => { $d($d test)* };
                }
                unless_skipped! {
                    $backend
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $scenario() {
                        super::$scenario::<$ty>().await;
                    }
                }
            )*
        }
    };
}
pub(crate) use consumer_scenarios;

/// Drops a database shared with tasks, once none holds it any more.
pub(crate) async fn finish_shared<B: ConsumerBackend>(db: Arc<B>) {
    Arc::into_inner(db)
        .expect("no task holds the database")
        .finish()
        .await;
}

/// Reads a JSON document stored as text.
fn parse_doc(text: &str) -> Value {
    serde_json::from_str(text).expect("a stored document is JSON")
}

/// PostgreSQL: a database created for the test (see [`TestDb`]); the outbox
/// and the inbox in their default schema `outbox`.
///
/// The outbox, the inbox and the scenarios' transactions use `app`, which
/// goes through the route's pooler (see [`Route`]); setting up and reading
/// back use the direct `db.pool`. Statements the scenarios run inside their
/// transactions go unnamed, as a pooler in transaction mode requires.
pub(crate) struct PgConsumerVia<R: Route> {
    db: TestDb,
    app: PgPool,
    outbox: PgOutbox,
    inbox: PgInbox,
    route: std::marker::PhantomData<R>,
}

/// PostgreSQL directly.
pub(crate) type PgConsumer = PgConsumerVia<Direct>;
/// PostgreSQL through PgBouncer in session mode.
pub(crate) type PgBouncerSessionConsumer = PgConsumerVia<BouncerSession>;
/// PostgreSQL through PgBouncer in transaction mode.
pub(crate) type PgBouncerTransactionConsumer = PgConsumerVia<BouncerTransaction>;

#[async_trait]
impl<R: Route> ConsumerBackend for PgConsumerVia<R> {
    type Db = Postgres;

    async fn fresh(connections: u32) -> Self {
        let options = PgPoolOptions::new().max_connections(connections);
        let db = TestDb::with_options(options.clone()).await;
        let app = match R::POOLER_PORT {
            Some(port) => options
                .connect_with(db.options().port(port))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{} is not reachable ({e}): .ci/run starts PgBouncer",
                        R::NAME
                    )
                }),
            None => db.pool.clone(),
        };
        PgConsumerVia {
            outbox: PgOutbox::builder(app.clone())
                .transaction_pooling(R::TRANSACTION_POOLING)
                .build()
                .expect("default names"),
            inbox: PgInbox::builder(app.clone())
                .transaction_pooling(R::TRANSACTION_POOLING)
                .build()
                .expect("default names"),
            app,
            db,
            route: std::marker::PhantomData,
        }
    }

    async fn finish(self) {
        self.app.close().await;
        self.db.drop().await;
    }

    async fn begin(&self) -> Tx<Self> {
        self.app.begin().await.expect("begin")
    }

    async fn select_one(tx: &mut Tx<Self>) -> i32 {
        sqlx::query_scalar("SELECT 1")
            .persistent(false)
            .fetch_one(&mut **tx)
            .await
            .expect("SELECT 1")
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .expect(sql)
    }

    async fn migrate_outbox(&self) -> Result<()> {
        self.outbox.migrate().await
    }

    fn relay<P: Publisher>(&self, publisher: P) -> RelayBuilder {
        Relay::builder(self.outbox.clone(), publisher)
    }

    async fn enqueue_committed(&self, message: NewMessage) {
        let mut tx = self.app.begin().await.expect("begin");
        self.outbox
            .enqueue(&mut *tx, message)
            .await
            .expect("enqueue");
        self.outbox.commit(tx).await.expect("commit");
    }

    async fn pending(&self) -> i64 {
        self.outbox.pending_count().await.expect("pending_count")
    }
}

#[async_trait]
impl<R: Route> InboxBackend for PgConsumerVia<R> {
    type Inbox = PgInbox;

    fn inbox_table(table: &str) -> String {
        format!("outbox.{table}")
    }

    async fn migrate_inbox(&self) -> Result<()> {
        self.inbox.migrate().await
    }

    async fn receive(
        &self,
        tx: &mut Tx<Self>,
        consumer: &str,
        message: &OutboxMessage,
    ) -> Result<Receipt> {
        self.inbox.receive(&mut **tx, consumer, message).await
    }

    async fn receive_id(
        &self,
        tx: &mut Tx<Self>,
        consumer: &str,
        id: MessageId,
    ) -> Result<Receipt> {
        self.inbox.receive_id(&mut **tx, consumer, id).await
    }

    async fn receive_id_autocommit(&self, consumer: &str, id: MessageId) -> Result<Receipt> {
        if R::TRANSACTION_POOLING {
            // Behind transaction pooling every statement runs in a
            // transaction (see the README): one of its own here.
            let mut tx = self.app.begin().await?;
            let receipt = self.inbox.receive_id(&mut *tx, consumer, id).await?;
            tx.commit().await?;
            return Ok(receipt);
        }
        self.inbox.receive_id(&self.app, consumer, id).await
    }

    async fn last_sequence(&self, consumer: &str, key: &str) -> Result<Option<i64>> {
        self.inbox.last_sequence(consumer, key).await
    }

    async fn purge_inbox(&self, before: DateTime<Utc>, batch: i64) -> Result<u64> {
        self.inbox.purge_before(before, batch).await
    }

    async fn record_inbox_version(&self, version: i64) {
        sqlx::query("INSERT INTO outbox.inbox_migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&self.db.pool)
            .await
            .expect("record an inbox version");
    }

    fn build_inbox(&self, schema: Option<&str>, prefix: &str) -> Result<PgInbox> {
        let builder = PgInbox::builder(self.app.clone())
            .transaction_pooling(R::TRANSACTION_POOLING)
            .table_prefix(prefix);
        match schema {
            Some(schema) => builder.schema(schema).build(),
            None => builder.build(),
        }
    }

    async fn migrate_built_inbox(inbox: &PgInbox) -> Result<()> {
        inbox.migrate().await
    }

    async fn inbox_relations(&self, schema: Option<&str>, prefix: &str) -> i64 {
        let schema = schema.unwrap_or("outbox");
        self.count(&format!(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = '{schema}' AND c.relname IN ('{prefix}inbox_messages', \
             '{prefix}inbox_keys', '{prefix}inbox_migrations', '{prefix}inbox_received_idx')"
        ))
        .await
    }

    async fn create_effects_table(&self) {
        sqlx::query("CREATE TABLE effects (message_id uuid NOT NULL, consumer text NOT NULL)")
            .execute(&self.db.pool)
            .await
            .expect("create the effects table");
    }

    async fn record_effect(tx: &mut Tx<Self>, message: &OutboxMessage, consumer: &str) {
        sqlx::query("INSERT INTO effects VALUES ($1, $2)")
            .persistent(false)
            .bind(message.id().as_uuid())
            .bind(consumer)
            .execute(&mut **tx)
            .await
            .expect("record an effect");
    }
}

#[async_trait]
impl<R: Route> ExportBackend for PgConsumerVia<R> {
    async fn log_change(&self, tx: &mut Tx<Self>, change: &Change) -> Result<()> {
        self.outbox.log_change(&mut **tx, change).await
    }

    async fn record_change(&self, tx: &mut Tx<Self>, topic: &str, change: &Change) -> Result<()> {
        self.outbox.record_change(tx, topic, change).await?;
        Ok(())
    }

    async fn changes_since(&self, consumer: &str, limit: i64) -> Result<ChangePage> {
        self.outbox.changes_since(consumer, limit).await
    }

    async fn changes_after(&self, cursor: &Cursor, limit: i64) -> Result<ChangePage> {
        self.outbox.changes_after(cursor, limit).await
    }

    async fn cursor(&self, consumer: &str) -> Result<Option<Cursor>> {
        self.outbox.cursor(consumer).await
    }

    async fn commit_cursor(&self, consumer: &str, cursor: &Cursor) -> Result<()> {
        self.outbox.commit_cursor(consumer, cursor).await
    }

    async fn begin_snapshot(&self) -> Tx<Self> {
        let mut tx = self.begin().await;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .persistent(false)
            .execute(&mut *tx)
            .await
            .expect("REPEATABLE READ");
        tx
    }

    async fn snapshot_cursor(&self, tx: &mut Tx<Self>) -> Result<Cursor> {
        self.outbox.snapshot_cursor(&mut **tx).await
    }

    fn foreign_cursor() -> Cursor {
        "sq1|5".parse().expect("a SQLite cursor")
    }

    async fn create_entity_table(&self, table: &str) {
        sqlx::query(&format!(
            "CREATE TABLE {table} (key text PRIMARY KEY, doc jsonb NOT NULL)"
        ))
        .execute(&self.db.pool)
        .await
        .expect("create an entity table");
    }

    async fn begin_write(&self) -> Tx<Self> {
        // Row locks (`FOR UPDATE`) order the writers of one entity.
        self.begin().await
    }

    async fn entity_for_update(tx: &mut Tx<Self>, table: &str, key: &str) -> Option<Value> {
        let doc: Option<String> = sqlx::query_scalar(&format!(
            "SELECT doc::text FROM {table} WHERE key = $1 FOR UPDATE"
        ))
        .persistent(false)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await
        .expect("read an entity");
        doc.as_deref().map(parse_doc)
    }

    async fn insert_entity(tx: &mut Tx<Self>, table: &str, key: &str, doc: &Value) -> bool {
        sqlx::query(&format!(
            "INSERT INTO {table} (key, doc) VALUES ($1, $2::jsonb) ON CONFLICT DO NOTHING"
        ))
        .persistent(false)
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
            "INSERT INTO {table} (key, doc) VALUES ($1, $2::jsonb) \
             ON CONFLICT (key) DO UPDATE SET doc = excluded.doc"
        ))
        .persistent(false)
        .bind(key)
        .bind(doc.to_string())
        .execute(&mut **tx)
        .await
        .expect("put an entity");
    }

    async fn delete_entity(tx: &mut Tx<Self>, table: &str, key: &str) {
        sqlx::query(&format!("DELETE FROM {table} WHERE key = $1"))
            .persistent(false)
            .bind(key)
            .execute(&mut **tx)
            .await
            .expect("delete an entity");
    }

    async fn entities(tx: &mut Tx<Self>, table: &str) -> HashMap<String, Value> {
        let rows: Vec<(String, String)> =
            sqlx::query_as(&format!("SELECT key, doc::text FROM {table}"))
                .persistent(false)
                .fetch_all(&mut **tx)
                .await
                .expect("read the entities");
        rows.into_iter().map(|(k, d)| (k, parse_doc(&d))).collect()
    }
}

/// SQLite: a database file created for the test (see [`TempDb`]), in WAL
/// mode with a busy timeout; the outbox and the inbox with their default
/// table names.
pub(crate) struct SqliteConsumer {
    db: TempDb,
    outbox: SqliteOutbox,
    inbox: SqliteInbox,
}

#[async_trait]
impl ConsumerBackend for SqliteConsumer {
    type Db = Sqlite;

    async fn fresh(connections: u32) -> Self {
        let db = TempDb::with_max_connections("outbox-conformance", connections).await;
        SqliteConsumer {
            outbox: SqliteOutbox::new(db.pool.clone()),
            inbox: SqliteInbox::new(db.pool.clone()),
            db,
        }
    }

    async fn finish(self) {
        self.db.pool.close().await;
    }

    async fn begin(&self) -> Tx<Self> {
        self.db.pool.begin().await.expect("begin")
    }

    async fn select_one(tx: &mut Tx<Self>) -> i32 {
        sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut **tx)
            .await
            .expect("SELECT 1")
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .expect(sql)
    }

    async fn migrate_outbox(&self) -> Result<()> {
        self.outbox.migrate().await
    }

    fn relay<P: Publisher>(&self, publisher: P) -> RelayBuilder {
        Relay::builder(self.outbox.clone(), publisher)
    }

    async fn enqueue_committed(&self, message: NewMessage) {
        let mut tx = self.db.pool.begin().await.expect("begin");
        self.outbox
            .enqueue(&mut *tx, message)
            .await
            .expect("enqueue");
        self.outbox.commit(tx).await.expect("commit");
    }

    async fn pending(&self) -> i64 {
        self.outbox.pending_count().await.expect("pending_count")
    }
}

#[async_trait]
impl InboxBackend for SqliteConsumer {
    type Inbox = SqliteInbox;

    fn inbox_table(table: &str) -> String {
        format!("outbox_{table}")
    }

    async fn migrate_inbox(&self) -> Result<()> {
        self.inbox.migrate().await
    }

    async fn receive(
        &self,
        tx: &mut Tx<Self>,
        consumer: &str,
        message: &OutboxMessage,
    ) -> Result<Receipt> {
        self.inbox.receive(&mut **tx, consumer, message).await
    }

    async fn receive_id(
        &self,
        tx: &mut Tx<Self>,
        consumer: &str,
        id: MessageId,
    ) -> Result<Receipt> {
        self.inbox.receive_id(&mut **tx, consumer, id).await
    }

    async fn receive_id_autocommit(&self, consumer: &str, id: MessageId) -> Result<Receipt> {
        self.inbox.receive_id(&self.db.pool, consumer, id).await
    }

    async fn last_sequence(&self, consumer: &str, key: &str) -> Result<Option<i64>> {
        self.inbox.last_sequence(consumer, key).await
    }

    async fn purge_inbox(&self, before: DateTime<Utc>, batch: i64) -> Result<u64> {
        self.inbox.purge_before(before, batch).await
    }

    async fn record_inbox_version(&self, version: i64) {
        sqlx::query("INSERT INTO outbox_inbox_migrations (version, applied_at) VALUES (?, 0)")
            .bind(version)
            .execute(&self.db.pool)
            .await
            .expect("record an inbox version");
    }

    fn build_inbox(&self, schema: Option<&str>, prefix: &str) -> Result<SqliteInbox> {
        assert!(schema.is_none(), "SQLite has no schemas");
        SqliteInbox::builder(self.db.pool.clone())
            .table_prefix(prefix)
            .build()
    }

    async fn migrate_built_inbox(inbox: &SqliteInbox) -> Result<()> {
        inbox.migrate().await
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
            .execute(&self.db.pool)
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
impl ExportBackend for SqliteConsumer {
    async fn log_change(&self, tx: &mut Tx<Self>, change: &Change) -> Result<()> {
        self.outbox.log_change(&mut **tx, change).await
    }

    async fn record_change(&self, tx: &mut Tx<Self>, topic: &str, change: &Change) -> Result<()> {
        self.outbox.record_change(tx, topic, change).await?;
        Ok(())
    }

    async fn changes_since(&self, consumer: &str, limit: i64) -> Result<ChangePage> {
        self.outbox.changes_since(consumer, limit).await
    }

    async fn changes_after(&self, cursor: &Cursor, limit: i64) -> Result<ChangePage> {
        self.outbox.changes_after(cursor, limit).await
    }

    async fn cursor(&self, consumer: &str) -> Result<Option<Cursor>> {
        self.outbox.cursor(consumer).await
    }

    async fn commit_cursor(&self, consumer: &str, cursor: &Cursor) -> Result<()> {
        self.outbox.commit_cursor(consumer, cursor).await
    }

    async fn begin_snapshot(&self) -> Tx<Self> {
        // In WAL mode a transaction reads one snapshot from its first read
        // to its end.
        self.begin().await
    }

    async fn snapshot_cursor(&self, tx: &mut Tx<Self>) -> Result<Cursor> {
        self.outbox.snapshot_cursor(&mut **tx).await
    }

    fn foreign_cursor() -> Cursor {
        "pg1|||0".parse().expect("a PostgreSQL cursor")
    }

    async fn create_entity_table(&self, table: &str) {
        sqlx::query(&format!(
            "CREATE TABLE {table} (key TEXT PRIMARY KEY, doc TEXT NOT NULL)"
        ))
        .execute(&self.db.pool)
        .await
        .expect("create an entity table");
    }

    async fn begin_write(&self) -> Tx<Self> {
        // Takes the write lock up front: a transaction that read first
        // could not upgrade once another writer committed after its read.
        self.db
            .pool
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
