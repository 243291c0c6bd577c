//! SQLite backend.
//!
//! SQLite has one writer at a time, so the key space is one bucket: one
//! relay drains the outbox and any others stand by until its lease expires.
//! Times are stored as microseconds since the Unix epoch (UTC) and computed
//! in Rust, ids as 16-byte blobs.
//!
//! Every transaction this module opens starts with a write, so it holds the
//! write lock from its first statement: a deferred transaction that reads
//! first and writes later can fail with `SQLITE_BUSY` instead of waiting for
//! the busy timeout.

mod ack;
mod admin;
mod builder;
mod claim;
mod decode;
mod enqueue;
mod leases;
mod migrate;
mod relay_ops;
mod statements;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use sqlx::sqlite::SqlitePool;
use tokio::sync::Notify;

pub use self::builder::SqliteOutboxBuilder;
pub(crate) use self::migrate::apply as apply_migrations;
use self::statements::Sql;
use super::TableNames;

/// The only bucket: SQLite has one writer, so one relay drains at a time.
const BUCKET: i32 = 0;

/// The outbox on SQLite.
///
/// Cheap to clone; all clones share one pool and one wake-up signal.
///
/// SQLite allows one writer at a time: open the pool with a busy timeout
/// (and, for files, WAL journaling) so that producers and the relay wait for
/// each other instead of failing. Producers' transactions that read before
/// they write can still fail with `SQLITE_BUSY` under contention; begin them
/// with a write (or `BEGIN IMMEDIATE`) if that matters. One relay drains the
/// outbox at a time; further relays stand by and take over when its lease
/// expires.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> outbox::Result<()> {
/// use outbox::{InMemoryPublisher, NewMessage, Relay, SqliteOutbox};
/// use sqlx::sqlite::SqlitePoolOptions;
///
/// // One connection: every connection to `sqlite::memory:` is its own database.
/// let pool = SqlitePoolOptions::new()
///     .max_connections(1)
///     .connect("sqlite::memory:")
///     .await?;
/// let outbox = SqliteOutbox::new(pool.clone());
/// outbox.migrate().await?;
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("CREATE TABLE candidates (id INTEGER PRIMARY KEY, status TEXT)")
///     .execute(&mut *tx)
///     .await?;
/// sqlx::query("INSERT INTO candidates VALUES (42, 'hired')")
///     .execute(&mut *tx)
///     .await?;
/// let msg = NewMessage::json("candidates", &serde_json::json!({"id": 42, "status": "hired"}))?
///     .with_partition_key("candidate-42");
/// outbox.enqueue(&mut *tx, msg).await?;
/// outbox.commit(tx).await?; // commits, then wakes the relay
///
/// let publisher = InMemoryPublisher::new();
/// let relay = Relay::builder(outbox.clone(), publisher.clone()).spawn()?;
/// while outbox.pending_count().await? > 0 {
///     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
/// }
/// relay.shutdown().await?;
/// assert_eq!(publisher.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteOutbox {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    names: TableNames,
    signal: Arc<Notify>,
    sql: Sql,
    /// The largest payload enqueue accepts.
    max_payload: usize,
    /// When the claim path last swept away blocks whose message is gone.
    sweep: super::BlockSweep,
}

impl SqliteOutbox {
    /// An outbox with default settings: tables prefixed `outbox_`.
    pub fn new(pool: SqlitePool) -> Self {
        Self::builder(pool)
            .build()
            .expect("the default prefix is a valid identifier")
    }

    /// Configures an outbox.
    pub fn builder(pool: SqlitePool) -> SqliteOutboxBuilder {
        SqliteOutboxBuilder::new(pool)
    }

    /// The pool the relay and the administrative methods use.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// The pool the relay's statements run on: the one pool.
    pub(crate) fn relay_pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    pub(crate) fn names(&self) -> &TableNames {
        &self.inner.names
    }
}
