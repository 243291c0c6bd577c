//! The inbox on SQLite. Times are microseconds since the Unix epoch (UTC),
//! computed in Rust; ids are 16-byte blobs.

use std::ops::DerefMut;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool};
use sqlx::Executor;

use super::{classify, observed, tracked, validate_batch, validate_consumer, InboxNames, Receipt};
use crate::error::Result;
use crate::message::{MessageId, OutboxMessage};
use crate::store::sqlite::apply_migrations;
use crate::store::MigrationSet;

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    include_str!("../../migrations/inbox_sqlite/0001_inbox.sql"),
)];

/// The idempotent consumer on SQLite: records which messages each consumer
/// has received, in the consumer's own transaction (see the
/// [module documentation](crate::inbox)).
///
/// Cheap to clone; clones share one pool. Its tables live in the
/// consumer's database, by default `outbox_inbox_messages`,
/// `outbox_inbox_keys` and `outbox_inbox_migrations`.
///
/// Call [`receive`](Self::receive) first in the transaction: it writes, so
/// the transaction holds SQLite's write lock from its first statement and
/// waits for other writers (with the pool's busy timeout) instead of failing
/// with `SQLITE_BUSY` when it later upgrades from reading to writing.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> outbox::Result<()> {
/// use outbox::{InMemoryPublisher, NewMessage, Receipt, Relay, SqliteInbox, SqliteOutbox};
/// use sqlx::sqlite::SqlitePoolOptions;
///
/// // The producer's database and its relay, publishing in memory.
/// let producer = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// let outbox = SqliteOutbox::new(producer.clone());
/// outbox.migrate().await?;
/// let publisher = InMemoryPublisher::new();
/// let mut deliveries = publisher.channel();
/// // Numbered keys let the inbox tell a gap from a duplicate.
/// let relay = Relay::builder(outbox.clone(), publisher.clone())
///     .key_sequences(true)
///     .spawn()?;
/// let msg = NewMessage::json("payments", &serde_json::json!({"amount": 42}))?
///     .with_partition_key("account-7");
/// let mut tx = producer.begin().await?;
/// outbox.enqueue(&mut *tx, msg).await?;
/// outbox.commit(tx).await?;
/// let message = deliveries.recv().await.expect("published");
/// relay.shutdown().await?;
///
/// // The consumer's database: the inbox and the consumer's own table.
/// let consumer = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// let inbox = SqliteInbox::new(consumer.clone());
/// inbox.migrate().await?;
/// sqlx::query("CREATE TABLE balance (account TEXT PRIMARY KEY, amount INTEGER)")
///     .execute(&consumer)
///     .await?;
///
/// // The broker delivers the message twice; the effect happens once.
/// for _ in 0..2 {
///     let mut tx = consumer.begin().await?;
///     if inbox.receive(&mut *tx, "ledger", &message).await?.is_duplicate() {
///         tx.rollback().await?;
///         continue;
///     }
///     sqlx::query(
///         "INSERT INTO balance VALUES ('account-7', 42) \
///          ON CONFLICT (account) DO UPDATE SET amount = amount + 42",
///     )
///     .execute(&mut *tx)
///     .await?;
///     tx.commit().await?;
/// }
/// let amount: i64 = sqlx::query_scalar("SELECT amount FROM balance").fetch_one(&consumer).await?;
/// assert_eq!(amount, 42);
/// assert_eq!(inbox.last_sequence("ledger", "account-7").await?, Some(1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteInbox {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    names: InboxNames,
    sql: Sql,
}

inbox_api!(SqliteInbox, SqlitePool, Sqlite);

/// Configures a [`SqliteInbox`].
#[derive(Debug)]
pub struct SqliteInboxBuilder {
    pool: SqlitePool,
    prefix: String,
}

impl SqliteInboxBuilder {
    setters! {
        /// A prefix for the table names (default `outbox_`), for several
        /// inboxes in one database. Lowercase letters, digits and `_` only; may
        /// be empty.
        pub fn table_prefix(prefix: impl Into<String>) => prefix = prefix.into();
    }

    /// Validates the names and builds the inbox. Nothing is sent to the
    /// database; an invalid prefix is [`Error::InvalidIdentifier`](crate::Error::InvalidIdentifier).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidIdentifier`](crate::Error::InvalidIdentifier) if the schema or table prefix is not a valid identifier.
    pub fn build(self) -> Result<SqliteInbox> {
        let names = InboxNames::new(None, &self.prefix)?;
        let sql = Sql::new(&names);
        Ok(SqliteInbox {
            inner: Arc::new(Inner {
                pool: self.pool,
                names,
                sql,
            }),
        })
    }
}

/// SQL rendered once from the validated table names.
struct Sql {
    insert: String,
    advance: String,
    purge: String,
    last_sequence: String,
}

impl Sql {
    fn new(n: &InboxNames) -> Self {
        Self {
            insert: n.render(
                "INSERT INTO {inbox_messages} (consumer, message_id, received_at) \
                 VALUES (?, ?, ?) ON CONFLICT (consumer, message_id) DO NOTHING",
            ),
            // Advances only to a higher number; RETURNING yields the number
            // it replaced (NULL for a new key), or no row if the number is
            // stale.
            advance: n.render(
                "INSERT INTO {inbox_keys} (consumer, partition_key, last_sequence, updated_at) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (consumer, partition_key) DO UPDATE \
                 SET previous_sequence = last_sequence, \
                     last_sequence = excluded.last_sequence, updated_at = excluded.updated_at \
                 WHERE last_sequence < excluded.last_sequence \
                 RETURNING previous_sequence",
            ),
            purge: n.render(
                "DELETE FROM {inbox_messages} WHERE rowid IN (\
                   SELECT rowid FROM {inbox_messages} \
                   WHERE received_at < ? ORDER BY received_at LIMIT ?)",
            ),
            last_sequence: n.render(
                "SELECT last_sequence FROM {inbox_keys} \
                 WHERE consumer = ? AND partition_key = ?",
            ),
        }
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

impl SqliteInbox {
    /// An inbox with default settings: tables prefixed `outbox_`.
    pub fn new(pool: SqlitePool) -> Self {
        Self::builder(pool)
            .build()
            .expect("the default prefix is a valid identifier")
    }

    /// Configures an inbox.
    pub fn builder(pool: SqlitePool) -> SqliteInboxBuilder {
        SqliteInboxBuilder {
            pool,
            prefix: "outbox_".to_owned(),
        }
    }

    /// Creates or upgrades the inbox's tables, in one transaction. Safe to
    /// run on every start and from several processes at once (SQLite
    /// serializes the writers). Tables at a newer version than this crate
    /// knows are [`Error::SchemaTooNew`](crate::Error::SchemaTooNew).
    ///
    /// # Errors
    ///
    /// [`Error::SchemaTooNew`](crate::Error::SchemaTooNew) if the inbox tables are at a newer version than this crate
    /// knows; [`Error::Database`](crate::Error::Database) if the database fails (the migration's transaction is then
    /// rolled back).
    pub async fn migrate(&self) -> Result<()> {
        let n = &self.inner.names;
        let set = MigrationSet::new(MIGRATIONS, &n.migrations, None, n);
        apply_migrations(&self.inner.pool, &set).await
    }

    /// Records that `consumer` received `message`, on the caller's
    /// connection: normally `&mut *tx` inside the transaction that applies
    /// the message's effects (call it first there, see [`SqliteInbox`]).
    /// Two statements on that connection when the message has a partition
    /// key and a sequence number, one otherwise.
    ///
    /// - [`Receipt::Duplicate`] if this consumer already recorded the id,
    ///   or if the message's per-key sequence number is not above the last
    ///   one recorded for its key (a stale redelivery, even with an id that
    ///   is new here; the id is then recorded too). Skip the effects. No
    ///   error is raised, so the transaction stays usable.
    /// - [`Receipt::Gap`] if the number skips ahead of the last one plus
    ///   one: recorded as fresh; the caller decides.
    /// - [`Receipt::Fresh`] otherwise.
    ///
    /// Messages without a partition key or without a sequence number are
    /// deduplicated by id alone. Nothing is recorded unless the caller's
    /// transaction commits.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for an empty, oversized or NUL-holding consumer name, checked
    /// before anything is sent; [`Error::Database`](crate::Error::Database) if the database fails (the caller's
    /// transaction is then aborted on PostgreSQL).
    pub async fn receive<C>(
        &self,
        mut conn: C,
        consumer: &str,
        message: &OutboxMessage,
    ) -> Result<Receipt>
    where
        C: DerefMut<Target = SqliteConnection>,
    {
        validate_consumer(consumer)?;
        let conn: &mut SqliteConnection = &mut conn;
        let now = Utc::now();
        let fresh = self.insert(&mut *conn, consumer, message.id(), now).await?;
        let key = tracked(message);
        let (Some((key, sequence)), true) = (key, fresh) else {
            return Ok(observed(
                consumer,
                message,
                classify(fresh, None, false, None),
            ));
        };
        let previous: Option<Option<i64>> = sqlx::query_scalar(&self.inner.sql.advance)
            .bind(consumer)
            .bind(key)
            .bind(sequence)
            .bind(micros(now))
            .fetch_optional(&mut *conn)
            .await?;
        Ok(classify(
            true,
            Some(sequence),
            previous.is_some(),
            previous.flatten(),
        ))
    }

    async fn insert<'c, E>(
        &self,
        executor: E,
        consumer: &str,
        id: MessageId,
        now: DateTime<Utc>,
    ) -> Result<bool>
    where
        E: Executor<'c, Database = Sqlite>,
    {
        let done = sqlx::query(&self.inner.sql.insert)
            .bind(consumer)
            .bind(id.as_uuid().as_bytes().to_vec())
            .bind(micros(now))
            .execute(executor)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes one batch of [`purge_before`](Self::purge_before).
    async fn purge_batch(&self, before: DateTime<Utc>, batch: i64) -> Result<u64> {
        let done = sqlx::query(&self.inner.sql.purge)
            .bind(micros(before))
            .bind(batch)
            .execute(&self.inner.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn read_last_sequence(&self, consumer: &str, key: &str) -> Result<Option<i64>> {
        let q = sqlx::query_scalar(&self.inner.sql.last_sequence).bind(consumer);
        Ok(q.bind(key).fetch_optional(&self.inner.pool).await?)
    }
}
