//! The inbox on PostgreSQL.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, Postgres};
use sqlx::Executor;

use crate::store::postgres::{apply_migrations, Statements};

use super::{classify, observed, tracked, validate_batch, validate_consumer, InboxNames, Receipt};
use crate::error::Result;
use crate::message::{MessageId, OutboxMessage};
use crate::store::MigrationSet;

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    include_str!("../../migrations/inbox_postgres/0001_inbox.sql"),
)];

/// The idempotent consumer on PostgreSQL: records which messages each
/// consumer has received, in the consumer's own transaction (see the
/// [module documentation](crate::inbox)).
///
/// Cheap to clone; clones share one pool. Its tables live in the
/// consumer's database: by default `outbox.inbox_messages`,
/// `outbox.inbox_keys` and `outbox.inbox_migrations`, which sit next to a
/// [`PgOutbox`](crate::PgOutbox)'s tables without clashing if both use one
/// database.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, message: outbox::OutboxMessage) -> outbox::Result<()> {
/// use outbox::PgInbox;
///
/// let inbox = PgInbox::builder(pool.clone()).schema("payroll").build()?;
/// inbox.migrate().await?;
///
/// let mut tx = pool.begin().await?;
/// if inbox.receive(&mut *tx, "payroll", &message).await?.is_fresh() {
///     // ... apply the message's effects with `&mut *tx` ...
/// }
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgInbox {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    names: InboxNames,
    sql: Sql,
    statements: Statements,
}

inbox_api!(PgInbox, PgPool, Postgres);

/// Configures a [`PgInbox`].
#[derive(Debug)]
pub struct PgInboxBuilder {
    pool: PgPool,
    schema: String,
    prefix: String,
    transaction_pooling: bool,
}

impl PgInboxBuilder {
    setters! {
        /// The schema holding the inbox's tables (default `outbox`; created by
        /// [`PgInbox::migrate`]). Lowercase letters, digits and `_` only.
        pub fn schema(schema: impl Into<String>) => schema = schema.into();

        /// A prefix for the table names (default none), for several inboxes in
        /// one schema. Lowercase letters, digits and `_` only.
        pub fn table_prefix(prefix: impl Into<String>) => prefix = prefix.into();

        /// Whether the pool reaches PostgreSQL through a pooler in transaction
        /// mode (default off): statements are then sent unnamed, and those
        /// outside the caller's transaction run in one of their own. See
        /// [`PgOutboxBuilder::transaction_pooling`](crate::PgOutboxBuilder::transaction_pooling).
        pub fn transaction_pooling(on: bool) => transaction_pooling = on;
    }

    /// Validates the names and builds the inbox. Nothing is sent to the
    /// database; an invalid schema or prefix is
    /// [`Error::InvalidIdentifier`](crate::Error::InvalidIdentifier).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidIdentifier`](crate::Error::InvalidIdentifier) if the schema or table prefix is not a valid identifier.
    pub fn build(self) -> Result<PgInbox> {
        let names = InboxNames::new(Some(&self.schema), &self.prefix)?;
        let sql = Sql::new(&names);
        Ok(PgInbox {
            inner: Arc::new(Inner {
                pool: self.pool,
                names,
                sql,
                statements: Statements {
                    transaction_pooling: self.transaction_pooling,
                },
            }),
        })
    }
}

/// SQL rendered once from the validated table names.
struct Sql {
    receive: String,
    receive_id: String,
    purge: String,
    last_sequence: String,
}

impl Sql {
    fn new(n: &InboxNames) -> Self {
        Self {
            // One round trip. The key's row is upserted only if the id is
            // new, and advances only to a higher number; its RETURNING
            // yields the number it replaced (NULL for a new key), or no row
            // if the number is stale.
            receive: n.render(
                "WITH ins AS (\
                   INSERT INTO {inbox_messages} (consumer, message_id) VALUES ($1, $2) \
                   ON CONFLICT (consumer, message_id) DO NOTHING RETURNING 1), \
                 k AS (\
                   INSERT INTO {inbox_keys} AS k (consumer, partition_key, last_sequence) \
                   SELECT $1, $3::text, $4::bigint FROM ins \
                   WHERE $3::text IS NOT NULL AND $4::bigint IS NOT NULL \
                   ON CONFLICT (consumer, partition_key) DO UPDATE \
                   SET previous_sequence = k.last_sequence, \
                       last_sequence = excluded.last_sequence, updated_at = now() \
                   WHERE k.last_sequence < excluded.last_sequence \
                   RETURNING k.previous_sequence) \
                 SELECT EXISTS (SELECT 1 FROM ins), EXISTS (SELECT 1 FROM k), \
                        (SELECT previous_sequence FROM k)",
            ),
            receive_id: n.render(
                "INSERT INTO {inbox_messages} (consumer, message_id) VALUES ($1, $2) \
                 ON CONFLICT (consumer, message_id) DO NOTHING RETURNING 1",
            ),
            purge: n.render(
                "DELETE FROM {inbox_messages} WHERE (consumer, message_id) IN (\
                   SELECT consumer, message_id FROM {inbox_messages} \
                   WHERE received_at < $1 ORDER BY received_at LIMIT $2)",
            ),
            last_sequence: n.render(
                "SELECT last_sequence FROM {inbox_keys} \
                 WHERE consumer = $1 AND partition_key = $2",
            ),
        }
    }
}

impl PgInbox {
    /// An inbox in schema `outbox` with default settings.
    pub fn new(pool: PgPool) -> Self {
        Self::builder(pool)
            .build()
            .expect("the default names are valid identifiers")
    }

    /// Configures an inbox.
    pub fn builder(pool: PgPool) -> PgInboxBuilder {
        PgInboxBuilder {
            pool,
            schema: "outbox".to_owned(),
            prefix: String::new(),
            transaction_pooling: false,
        }
    }

    /// Single statements outside any transaction of the caller's.
    fn alone(&self) -> crate::store::postgres::Alone<'_> {
        self.inner.statements.alone(&self.inner.pool)
    }

    /// Creates or upgrades the inbox's schema and tables, in one
    /// transaction. Safe to run from several processes at once (serialized
    /// by an advisory lock) and on every start. Tables at a newer version
    /// than this crate knows are [`Error::SchemaTooNew`](crate::Error::SchemaTooNew).
    ///
    /// # Errors
    ///
    /// [`Error::SchemaTooNew`](crate::Error::SchemaTooNew) if the inbox tables are at a newer version than this crate
    /// knows; [`Error::Database`](crate::Error::Database) if the database fails (the migration's transaction is then
    /// rolled back).
    pub async fn migrate(&self) -> Result<()> {
        let n = &self.inner.names;
        let set = MigrationSet::new(MIGRATIONS, &n.migrations, n.schema(), n);
        apply_migrations(&self.inner.pool, self.inner.statements, &set).await
    }

    /// Records that `consumer` received `message`, with the caller's
    /// executor: normally `&mut *tx` inside the transaction that applies
    /// the message's effects. One statement, one round trip.
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
    pub async fn receive<'c, E>(
        &self,
        executor: E,
        consumer: &str,
        message: &OutboxMessage,
    ) -> Result<Receipt>
    where
        E: Executor<'c, Database = Postgres>,
    {
        validate_consumer(consumer)?;
        let key = tracked(message);
        let (fresh, advanced, previous): (bool, bool, Option<i64>) =
            sqlx::query_as(&self.inner.sql.receive)
                .persistent(self.inner.statements.named())
                .bind(consumer)
                .bind(message.id().as_uuid())
                .bind(key.map(|k| k.0))
                .bind(key.map(|k| k.1))
                .fetch_one(executor)
                .await?;
        let receipt = classify(fresh, key.map(|k| k.1), advanced, previous);
        Ok(observed(consumer, message, receipt))
    }

    /// Records the id alone (see `receive_id`); the server stamps the time.
    async fn insert<'c, E>(
        &self,
        executor: E,
        consumer: &str,
        id: MessageId,
        _now: DateTime<Utc>,
    ) -> Result<bool>
    where
        E: Executor<'c, Database = Postgres>,
    {
        let inserted: Option<i32> = sqlx::query_scalar(&self.inner.sql.receive_id)
            .persistent(self.inner.statements.named())
            .bind(consumer)
            .bind(id.as_uuid())
            .fetch_optional(executor)
            .await?;
        Ok(inserted.is_some())
    }

    /// Deletes one batch of [`purge_before`](Self::purge_before).
    async fn purge_batch(&self, before: DateTime<Utc>, batch: i64) -> Result<u64> {
        let q = sqlx::query(&self.inner.sql.purge).bind(before).bind(batch);
        self.alone().execute(q).await
    }

    async fn read_last_sequence(&self, consumer: &str, key: &str) -> Result<Option<i64>> {
        let q = sqlx::query_scalar(&self.inner.sql.last_sequence).bind(consumer);
        self.alone().scalar(q.bind(key)).await
    }
}
