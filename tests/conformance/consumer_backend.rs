//! The consumer side of a backend, as the inbox and export scenarios see
//! it: a fresh database of its own holding an outbox (with a relay to
//! publish real messages), an inbox, the change log and the consumer's own
//! tables, and the few statements whose SQL differs between databases.
//!
//! Scenarios are generic functions over [`InboxBackend`] and
//! [`ExportBackend`]; [`consumer_scenarios!`] turns each into one test per
//! backend. A backend implements these traits in its file under
//! `backend/`, next to its [`Backend`] impl, and adds one line to that
//! macro. What every backend does alike (calling the crate's API) is
//! written here once.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox::change::Change;
use outbox::export::{ChangePage, Cursor};
use outbox::{MessageId, NewMessage, OutboxMessage, Publisher, Receipt, RelayBuilder, Result};
use serde_json::Value;

use crate::backend::sql::{Arg, SuiteDb};
use crate::backend::{Backend, Pool, TestInbox, TestOutbox, Tx};

/// A [`Backend`] database made for one consumer scenario: empty until a
/// scenario migrates what it needs.
#[async_trait]
pub(crate) trait ConsumerBackend: Backend {
    /// A new, empty database with a pool of `connections`.
    async fn bare(connections: u32) -> Self {
        Self::create_bare(Pool::Connections(connections)).await
    }

    /// Drops the database.
    async fn finish(self) {
        self.close().await;
    }

    /// Runs `SELECT 1` in `tx`: a transaction aborted by an error would
    /// refuse it.
    async fn select_one(tx: &mut Tx<Self>) -> i32 {
        Self::Db::select_one(tx).await
    }

    /// Creates or upgrades the outbox.
    async fn migrate_outbox(&self) -> Result<()> {
        self.outbox().migrate().await
    }

    /// A relay over this database's outbox.
    fn relay<P: Publisher>(&self, publisher: P) -> RelayBuilder {
        self.outbox().relay(publisher)
    }

    /// Enqueues `message` in a transaction of its own and commits it
    /// through the outbox (which wakes a relay in this process).
    async fn enqueue_committed(&self, message: NewMessage) {
        let outbox = self.outbox();
        let mut tx = self.begin().await;
        outbox.enqueue(&mut tx, message).await.expect("enqueue");
        outbox.commit(tx).await.expect("commit");
    }

    /// How many messages wait in the outbox.
    async fn pending(&self) -> i64 {
        self.outbox().pending().await
    }
}

/// The inbox of a [`ConsumerBackend`].
#[async_trait]
pub(crate) trait InboxBackend: ConsumerBackend {
    /// An inbox with names of the caller's choice.
    type Inbox: TestInbox<Db = Self::Db>;

    /// The inbox with the default names.
    fn inbox(&self) -> Self::Inbox;

    /// The name to query one of the default inbox's tables by
    /// (`inbox_messages`, `inbox_keys`, `inbox_migrations`).
    fn inbox_table(table: &str) -> String {
        Self::table(Self::DEFAULT_PREFIX, table)
    }

    /// Creates or upgrades the default inbox.
    async fn migrate_inbox(&self) -> Result<()> {
        self.inbox().migrate().await
    }

    /// `receive` on the default inbox.
    async fn receive(
        &self,
        tx: &mut Tx<Self>,
        consumer: &str,
        message: &OutboxMessage,
    ) -> Result<Receipt> {
        self.inbox().receive(tx, consumer, message).await
    }

    /// `receive_id` on the default inbox, in `tx`.
    async fn receive_id(
        &self,
        tx: &mut Tx<Self>,
        consumer: &str,
        id: MessageId,
    ) -> Result<Receipt> {
        self.inbox().receive_id(tx, consumer, id).await
    }

    /// `receive_id` on the default inbox, outside a transaction.
    async fn receive_id_autocommit(&self, consumer: &str, id: MessageId) -> Result<Receipt>;

    /// `last_sequence` of the default inbox.
    async fn last_sequence(&self, consumer: &str, key: &str) -> Result<Option<i64>> {
        self.inbox().last_sequence(consumer, key).await
    }

    /// `purge_before` of the default inbox.
    async fn purge_inbox(&self, before: DateTime<Utc>, batch: i64) -> Result<u64> {
        self.inbox().purge_before(before, batch).await
    }

    /// Records, as a release newer than this crate would, that the default
    /// inbox's tables are at `version`.
    async fn record_inbox_version(&self, version: i64) {
        let migrations = Self::inbox_table("inbox_migrations");
        let sql = format!(
            "INSERT INTO {migrations} (version, applied_at) VALUES (?, {})",
            Self::NOW
        );
        Self::Db::run(self.pool(), &sql, &[Arg::Int(version)])
            .await
            .expect("record an inbox version");
    }

    /// Builds an inbox in `schema` (`None`: the default) with table names
    /// prefixed by `prefix`. Only backends with schemas take `Some`: the
    /// scenarios that pass one are left out for the others.
    fn build_inbox(&self, schema: Option<&str>, prefix: &str) -> Result<Self::Inbox>;

    /// How many of an inbox's relations (its three tables and the index on
    /// receipt times) exist in `schema` (`None`: the default) with
    /// `prefix`.
    async fn inbox_relations(&self, schema: Option<&str>, prefix: &str) -> i64;

    /// Creates the consumer's `effects (message_id, consumer)` table.
    async fn create_effects_table(&self) {
        self.execute(
            "CREATE TABLE effects (message_id VARCHAR(64) NOT NULL, \
             consumer VARCHAR(255) NOT NULL)",
        )
        .await;
    }

    /// Inserts one row into `effects` in `tx`.
    async fn record_effect(tx: &mut Tx<Self>, message: &OutboxMessage, consumer: &str) {
        let id = message.id().to_string();
        let sql = "INSERT INTO effects (message_id, consumer) VALUES (?, ?)";
        Self::Db::run_in(tx, sql, &[Arg::Text(&id), Arg::Text(consumer)])
            .await
            .expect("record an effect");
    }
}

/// The change log of a [`ConsumerBackend`], and tables of entities
/// (`k` text primary key, `doc` a JSON document as text) for sources and
/// replicas.
#[async_trait]
pub(crate) trait ExportBackend: ConsumerBackend {
    /// What ends a read that locks the entity it reads until the
    /// transaction ends.
    const LOCKING_READ: &'static str = "FOR UPDATE";

    /// An insert that skips an entity whose key exists: the words before
    /// the table and the clause after the values.
    const INSERT_NEW: [&'static str; 2] = ["INSERT INTO", "ON CONFLICT DO NOTHING"];

    /// The clause that turns an insert into a replacement of the document
    /// of an existing key.
    const REPLACE_DOC: &'static str = "ON CONFLICT (k) DO UPDATE SET doc = excluded.doc";

    /// `log_change` in `tx`.
    async fn log_change(&self, tx: &mut Tx<Self>, change: &Change) -> Result<()> {
        self.outbox().log_change(tx, change).await
    }

    /// `record_change` in `tx`.
    async fn record_change(&self, tx: &mut Tx<Self>, topic: &str, change: &Change) -> Result<()> {
        self.outbox().record_change(tx, topic, change).await?;
        Ok(())
    }

    /// `changes_since`.
    async fn changes_since(&self, consumer: &str, limit: i64) -> Result<ChangePage> {
        self.outbox().changes_since(consumer, limit).await
    }

    /// `changes_after`.
    async fn changes_after(&self, cursor: &Cursor, limit: i64) -> Result<ChangePage> {
        self.outbox().changes_after(cursor, limit).await
    }

    /// `cursor`.
    async fn cursor(&self, consumer: &str) -> Result<Option<Cursor>> {
        self.outbox().cursor(consumer).await
    }

    /// `commit_cursor`.
    async fn commit_cursor(&self, consumer: &str, cursor: &Cursor) -> Result<()> {
        self.outbox().commit_cursor(consumer, cursor).await
    }

    /// `commit_and_read`.
    async fn commit_and_read(
        &self,
        consumer: &str,
        cursor: &Cursor,
        limit: i64,
    ) -> Result<ChangePage> {
        self.outbox().commit_and_read(consumer, cursor, limit).await
    }

    /// `export_consumers`.
    async fn export_consumers(&self, max: i64) -> Result<Vec<outbox::export::ExportConsumer>> {
        self.outbox().export_consumers(max).await
    }

    /// Begins a transaction whose reads all see one snapshot, as a new
    /// consumer's copy of the source needs.
    async fn begin_snapshot(&self) -> Tx<Self>;

    /// `snapshot_cursor` in `tx`.
    async fn snapshot_cursor(&self, tx: &mut Tx<Self>) -> Result<Cursor> {
        self.outbox().snapshot_cursor(tx).await
    }

    /// A well-formed cursor of another backend.
    fn foreign_cursor() -> Cursor;

    /// Creates an entity table named `table`.
    async fn create_entity_table(&self, table: &str) {
        self.execute(&format!(
            "CREATE TABLE {table} (k VARCHAR(255) PRIMARY KEY, doc TEXT NOT NULL)"
        ))
        .await;
    }

    /// Begins a transaction that reads an entity and then writes it.
    async fn begin_write(&self) -> Tx<Self>;

    /// The entity `key` of `table`, locked until `tx` ends.
    async fn entity_for_update(tx: &mut Tx<Self>, table: &str, key: &str) -> Option<Value> {
        let sql = format!("SELECT doc FROM {table} WHERE k = ? {}", Self::LOCKING_READ);
        let doc = Self::Db::text_in(tx, &sql, &[Arg::Text(key)]).await;
        doc.as_deref().map(parse_doc)
    }

    /// Whether `error`, from inserting an entity, means that another
    /// writer's row for the key came first (nothing was inserted).
    fn lost_insert_race(_error: &sqlx::Error) -> bool {
        false
    }

    /// Inserts the entity unless `key` exists; whether it did.
    async fn insert_entity(tx: &mut Tx<Self>, table: &str, key: &str, doc: &Value) -> bool {
        let [insert, skip] = Self::INSERT_NEW;
        let sql = format!("{insert} {table} (k, doc) VALUES (?, ?) {skip}");
        let doc = doc.to_string();
        match Self::Db::run_in(tx, &sql, &[Arg::Text(key), Arg::Text(&doc)]).await {
            Ok(rows) => rows == 1,
            Err(e) if Self::lost_insert_race(&e) => false,
            Err(e) => panic!("insert an entity: {e}"),
        }
    }

    /// Inserts or replaces the entity.
    async fn put_entity(tx: &mut Tx<Self>, table: &str, key: &str, doc: &Value) {
        let sql = format!(
            "INSERT INTO {table} (k, doc) VALUES (?, ?) {}",
            Self::REPLACE_DOC
        );
        let doc = doc.to_string();
        Self::Db::run_in(tx, &sql, &[Arg::Text(key), Arg::Text(&doc)])
            .await
            .expect("put an entity");
    }

    /// Deletes the entity.
    async fn delete_entity(tx: &mut Tx<Self>, table: &str, key: &str) {
        let sql = format!("DELETE FROM {table} WHERE k = ?");
        Self::Db::run_in(tx, &sql, &[Arg::Text(key)])
            .await
            .expect("delete an entity");
    }

    /// Every entity of `table` as `tx` sees them.
    async fn entities(tx: &mut Tx<Self>, table: &str) -> HashMap<String, Value> {
        let rows = Self::Db::text_pairs_in(tx, &format!("SELECT k, doc FROM {table}")).await;
        rows.into_iter().map(|(k, d)| (k, parse_doc(&d))).collect()
    }
}

/// Generates, for each backend, a module (`postgres`, `sqlite`, ...) with one
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
        consumer_scenarios!(@backend ($) postgres crate::backend::Postgres;
            $($scenario [$($($skip)+)?]),*);
        consumer_scenarios!(@backend ($) sqlite crate::backend::Sqlite;
            $($scenario [$($($skip)+)?]),*);
        consumer_scenarios!(@backend ($) mysql crate::backend::MySql;
            $($scenario [$($($skip)+)?]),*);
        consumer_scenarios!(@backend ($) pgbouncer_session
            crate::backend::PgBouncerSession;
            $($scenario [$($($skip)+)?]),*);
        consumer_scenarios!(@backend ($) pgbouncer_transaction
            crate::backend::PgBouncerTransaction;
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
pub(crate) fn parse_doc(text: &str) -> Value {
    serde_json::from_str(text).expect("a stored document is JSON")
}
