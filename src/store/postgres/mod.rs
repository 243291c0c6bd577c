//! PostgreSQL backend: [`PgOutbox`], its parts a file each.
//!
//! - `builder.rs`: [`PgOutboxBuilder`], the settings and their validation.
//! - `statements.rs` and `sql/`: every statement, one `.sql` file each,
//!   rendered once from the validated table names.
//! - `locks.rs`: the lock classes (commit order, change log, migrations).
//! - `migrate.rs`: the migration runner (the inbox's too), the embedded
//!   migrations and the schema version check.
//! - `enqueue.rs`: the write side (`enqueue`, `enqueue_batch`,
//!   `publish_event`, `commit`).
//! - `wake.rs`: [`WakeUp`], carried notifications, the `NOTIFY` task and the
//!   `LISTEN` wake source.
//! - `connection.rs`: how statements reach the server, directly or
//!   through a pooler in transaction mode.
//! - `relay_ops.rs` and `ack.rs`: the operations the relay runs (leases,
//!   claims, key sequences, maintenance; fenced acknowledgements).
//! - `admin.rs`: dead letters (filtered, paged, replayed, discarded),
//!   blocked keys, pending count, retained messages.
//! - `decode.rs`: rows into messages, dead letters, leases and gauges.
//! - `tests.rs`: what the conformance suite cannot reach from outside:
//!   claims around positions in flight.

mod ack;
mod admin;
mod builder;
mod claims;
mod connection;
mod decode;
mod enqueue;
mod floor;
mod locks;
mod migrate;
mod relay_ops;
mod statements;
#[cfg(test)]
mod tests;
mod wake;

use std::fmt;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgPool};

pub use self::builder::PgOutboxBuilder;
pub(crate) use self::connection::{begin, Alone, Standalone, Statements};
pub(crate) use self::decode::column;
pub(crate) use self::locks::change_lock_class;
pub(crate) use self::migrate::apply as apply_migrations;
pub use self::wake::WakeUp;

pub(crate) use self::statements::Sql;
use self::wake::WakeState;
use super::TableNames;

/// The outbox on PostgreSQL.
///
/// Cheap to clone; all clones share one pool and one wake-up signal.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> outbox::Result<()> {
/// use outbox::{NewMessage, PgOutbox};
///
/// let outbox = PgOutbox::builder(pool.clone()).schema("outbox").build()?;
/// outbox.migrate().await?;
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("UPDATE candidates SET status = 'hired' WHERE id = 42")
///     .execute(&mut *tx)
///     .await?;
/// let msg = NewMessage::json("candidates", &serde_json::json!({"id": 42, "status": "hired"}))?
///     .with_partition_key("candidate-42");
/// outbox.enqueue(&mut *tx, msg).await?;
/// outbox.commit(tx).await?; // commits, then wakes the relay
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgOutbox {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    names: TableNames,
    /// The advisory-lock class of the per-key commit-order locks (`None`:
    /// no lock).
    lock_class: Option<i32>,
    sql: Sql,
    /// How statements are sent (named, or unnamed behind transaction
    /// pooling).
    statements: Statements,
    /// The pool the relay's statements run on, if not the application's.
    relay_pool: Option<PgPool>,
    /// A direct connection for LISTEN, where the pool's connections cannot
    /// hold one (transaction pooling).
    listen_options: Option<PgConnectOptions>,
    /// The largest payload enqueue accepts.
    max_payload: usize,
    /// When the claim path last swept away blocks whose message is gone.
    sweep: super::BlockSweep,
    wake: WakeState,
    /// The claims' low-water mark's next raise: see [`floor`].
    floor: floor::Floor,
    /// The claims of relays that hold some of the buckets.
    bucket_claims: claims::BucketClaims,
}

impl fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOutbox")
            .field("messages", &self.inner.names.messages)
            .field("wake_up", &self.inner.wake.mode)
            .field("commit_order_lock", &self.inner.lock_class.is_some())
            .field(
                "transaction_pooling",
                &self.inner.statements.transaction_pooling,
            )
            .finish_non_exhaustive()
    }
}

impl PgOutbox {
    /// An outbox in schema `outbox` with default settings.
    pub fn new(pool: PgPool) -> Self {
        Self::builder(pool)
            .build()
            .expect("the default names are valid identifiers")
    }

    /// Configures an outbox.
    pub fn builder(pool: PgPool) -> PgOutboxBuilder {
        PgOutboxBuilder::new(pool)
    }

    /// The pool the outbox was built with: the administrative methods,
    /// the delta exports and the relay's statements unless
    /// [`relay_pool`](PgOutboxBuilder::relay_pool) gives it one of its
    /// own.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub(crate) fn names(&self) -> &TableNames {
        &self.inner.names
    }

    /// The statements, rendered once from the table names.
    pub(crate) fn sql(&self) -> &Sql {
        &self.inner.sql
    }

    /// Whether statements may be prepared under a name.
    pub(crate) fn named(&self) -> bool {
        self.inner.statements.named()
    }

    /// The pool the relay's own statements run on.
    fn relay_pool(&self) -> &PgPool {
        self.inner.relay_pool.as_ref().unwrap_or(&self.inner.pool)
    }

    /// A connection for statements outside the caller's transaction, on
    /// the application's pool.
    pub(crate) async fn standalone(&self) -> crate::Result<Standalone> {
        self.inner.statements.standalone(&self.inner.pool).await
    }

    /// Single statements on the application's pool, each alone.
    pub(crate) fn on_app(&self) -> Alone<'_> {
        self.inner.statements.alone(&self.inner.pool)
    }

    /// Single statements on the relay's pool, each alone.
    pub(super) fn on_relay(&self) -> Alone<'_> {
        self.inner.statements.alone(self.relay_pool())
    }

    /// A connection for the relay's statements, on the relay's pool.
    async fn relay_conn(&self) -> crate::Result<Standalone> {
        self.inner.statements.standalone(self.relay_pool()).await
    }
}
