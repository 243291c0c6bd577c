//! MySQL and MariaDB backend.
//!
//! The same guarantees as PostgreSQL, by other means:
//!
//! - **Commit order per key.** MySQL has no transaction-scoped advisory
//!   lock (`GET_LOCK` belongs to the session: it outlives the commit and
//!   travels with pooled connections). An enqueue takes a row lock instead,
//!   on its key's slot in `key_slots` (65,536 rows), before it inserts;
//!   the lock lasts until the producer's transaction ends, so the position
//!   the insert takes follows the commit of the previous message of the
//!   key. A batch locks its slots in ascending order.
//! - **Positions given at insert.** `AUTO_INCREMENT` numbers rows when they
//!   are inserted, not when they commit. The relay never reads "after the
//!   last position": each claim reads the ready index from its start, and
//!   the change log is paged by a stamp the sequencer gives committed rows
//!   (see `export/mysql.rs`).
//! - **Locking.** Claims read without locking (leases say which relay owns
//!   a bucket) through an index in their `ORDER BY`. Every statement of
//!   the relay and the operator's API that writes runs at `READ COMMITTED`
//!   (whatever the server's default), so no gap lock meets a producer's
//!   insert, and writes rows named by primary key (`IN` lists of positions,
//!   buckets or `(key, position)` pairs), so it waits for no row it does
//!   not change.
//! - **Deployments.** Commit order rests on row locks that make the second
//!   producer of a key wait: multi-primary clusters that certify writes at
//!   commit instead (Galera with writes on several nodes, Group
//!   Replication multi-primary, TiDB's optimistic mode) do not keep it.
//!   `READ COMMITTED` writes need row-based or mixed binary logging; with
//!   `binlog_format=STATEMENT` the server refuses them (error 1665).
//! - **Wake-ups.** No LISTEN/NOTIFY: [`MySqlOutbox::commit`] wakes the
//!   relays of its process; others find new messages on their poll.
//!
//! Times are `DATETIME(6)` in UTC: the relay's for message times, the
//! database's for leases and heartbeats (relays on several hosts share its
//! clock). Ids are 16-byte binaries. Lists of rows to change travel as
//! `IN` lists of parameters; lists of values to write or insert (the
//! attempts and errors of retries, new blocks) as JSON, read with
//! `JSON_TABLE` and joined to rows named by an `IN` list.

mod ack;
mod admin;
mod builder;
mod claim;
pub(crate) mod decode;
mod enqueue;
mod leases;
mod migrate;
mod relay_ops;
mod statements;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

use sqlx::mysql::{MySql, MySqlArguments, MySqlConnection, MySqlPool, MySqlQueryResult};
use sqlx::pool::PoolConnection;
use sqlx::{Executor, Transaction};
use tokio::sync::Notify;

use crate::store::begin::begin_detached;

pub use self::builder::MySqlOutboxBuilder;
pub(crate) use self::migrate::apply as apply_migrations;
pub(crate) use self::migrate::Flavor;
pub(crate) use self::statements::with_list;
use self::statements::Sql;
use super::TableNames;
use crate::error::Result;

/// The slots of the commit-order locks (rows of `key_slots`).
const KEY_SLOTS: u32 = 65_536;

/// The commit-order lock slot of a partition key (or an entity of the
/// change log: the same lock as messages of its key).
pub(crate) fn key_slot(key: &str) -> u32 {
    // FNV-1a: stable across processes and versions, as the slots must be.
    let mut h: u32 = 0x811c_9dc5;
    for b in key.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % KEY_SLOTS
}

/// The outbox on MySQL 8.0+ or MariaDB 10.6+.
///
/// Cheap to clone; all clones share one pool and one wake-up signal.
///
/// Methods that write in the caller's transaction take the transaction's
/// connection, `&mut *tx`: an enqueue is two statements (the commit-order
/// lock of its key, then the insert), which must run on one connection,
/// inside the caller's transaction (outside one, the lock would end with
/// its statement).
///
/// ```no_run
/// # async fn demo() -> outbox::Result<()> {
/// use outbox::{MySqlOutbox, NewMessage};
/// use sqlx::mysql::MySqlPool;
///
/// let pool = MySqlPool::connect("mysql://root@127.0.0.1:3306/test").await?;
/// let outbox = MySqlOutbox::new(pool.clone());
/// outbox.migrate().await?;
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("UPDATE candidates SET status = 'hired' WHERE id = 42")
///     .execute(&mut *tx)
///     .await?;
/// let msg = NewMessage::json("candidates", &serde_json::json!({"id": 42, "status": "hired"}))?
///     .with_partition_key("candidate-42");
/// outbox.enqueue(&mut *tx, msg).await?;
/// outbox.commit(tx).await?; // commits, then wakes the relays of this process
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MySqlOutbox {
    inner: Arc<Inner>,
}

struct Inner {
    pool: MySqlPool,
    /// Where the relay's statements run, if not on `pool`.
    relay_pool: Option<MySqlPool>,
    names: TableNames,
    signal: Arc<Notify>,
    sql: Sql,
    /// The largest payload enqueue accepts.
    max_payload: usize,
    /// When the claim path last swept away blocks whose message is gone.
    sweep: super::BlockSweep,
    /// MySQL or MariaDB, found on first need.
    flavor: OnceLock<Flavor>,
}

impl MySqlOutbox {
    /// An outbox with default settings: tables prefixed `outbox_`.
    pub fn new(pool: MySqlPool) -> Self {
        Self::builder(pool)
            .build()
            .expect("the default prefix is a valid identifier")
    }

    /// Configures an outbox.
    pub fn builder(pool: MySqlPool) -> MySqlOutboxBuilder {
        MySqlOutboxBuilder::new(pool)
    }

    /// The pool the outbox was built with: enqueues outside a
    /// transaction, the administrative methods and the relay's statements
    /// unless [`relay_pool`](MySqlOutboxBuilder::relay_pool) gives it one
    /// of its own.
    pub fn pool(&self) -> &MySqlPool {
        &self.inner.pool
    }

    /// The pool the relay's claims, acknowledgements, leases and
    /// maintenance run on.
    pub(crate) fn relay_pool(&self) -> &MySqlPool {
        self.inner.relay_pool.as_ref().unwrap_or(&self.inner.pool)
    }

    pub(crate) fn names(&self) -> &TableNames {
        &self.inner.names
    }

    /// The server's flavor, asked once on `conn`.
    async fn flavor(&self, conn: &mut MySqlConnection) -> Result<Flavor> {
        if let Some(f) = self.inner.flavor.get() {
            return Ok(*f);
        }
        let f = Flavor::of(conn).await?;
        Ok(*self.inner.flavor.get_or_init(|| f))
    }
}

/// Runs one statement that writes in a `READ COMMITTED` transaction of its
/// own, on a connection of `pool`: the pool's default isolation may be
/// `REPEATABLE READ`, whose gap locks would hold producers' inserts.
///
/// `SET TRANSACTION` covers the connection's next transaction, so the
/// connection goes back to the pool only once the statement has run: if
/// the statement fails (refused at `PREPARE`, before it ran), or the
/// caller is dropped between the two calls, the connection is closed
/// instead, and no other user of the pool inherits the isolation level.
pub(crate) async fn execute_read_committed(
    pool: &MySqlPool,
    query: sqlx::query::Query<'_, MySql, MySqlArguments>,
) -> Result<MySqlQueryResult> {
    execute_after(
        pool,
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        query,
    )
    .await
}

/// Runs `set`, then `query`, on one connection of `pool`, which goes back
/// to the pool only if both ran (see [`execute_read_committed`]).
async fn execute_after(
    pool: &MySqlPool,
    set: &'static str,
    query: sqlx::query::Query<'_, MySql, MySqlArguments>,
) -> Result<MySqlQueryResult> {
    let mut conn = CloseUnlessDone(Some(pool.acquire().await?));
    let c = conn.0.as_mut().expect("held until done");
    c.execute(set).await?;
    let done = query.execute(&mut **c).await?;
    conn.done();
    Ok(done)
}

/// A pooled connection that is closed when dropped, unless [`done`] hands
/// it back to the pool first.
///
/// [`done`]: CloseUnlessDone::done
struct CloseUnlessDone(Option<PoolConnection<MySql>>);

impl CloseUnlessDone {
    /// Returns the connection to the pool.
    fn done(mut self) {
        drop(self.0.take());
    }
}

impl Drop for CloseUnlessDone {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// Begins a `READ COMMITTED` transaction on a connection of `pool`; a
/// caller dropped meanwhile leaves no transaction open on the connection
/// ([`crate::store::begin`]).
pub(crate) async fn begin_read_committed(pool: &MySqlPool) -> Result<Transaction<'static, MySql>> {
    begin_detached(
        pool,
        Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION"),
    )
    .await
}
