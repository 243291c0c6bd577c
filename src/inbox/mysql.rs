//! The inbox on MySQL and MariaDB. Times are `DATETIME(6)` in UTC, computed
//! in Rust; ids are 16-byte binaries. Consumer names and partition keys are
//! `VARBINARY` and compared byte for byte, not under a collation: `Payroll`
//! and `payroll` are two consumers.

use std::ops::DerefMut;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySql, MySqlConnection, MySqlPool};
use sqlx::Executor;

use super::{classify, observed, tracked, validate_batch, validate_consumer, InboxNames, Receipt};
use crate::error::Result;
use crate::message::{MessageId, OutboxMessage};
use crate::store::mysql::{apply_migrations, execute_read_committed};
use crate::store::MigrationSet;

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    include_str!("../../migrations/inbox_mysql/0001_inbox.sql"),
)];

/// The idempotent consumer on MySQL and MariaDB: records which messages
/// each consumer has received, in the consumer's own transaction (see the
/// [module documentation](crate::inbox)).
///
/// Cheap to clone; clones share one pool. Its tables live in the
/// consumer's database (the pool's default database), by default
/// `outbox_inbox_messages`, `outbox_inbox_keys` and
/// `outbox_inbox_migrations`. Consumer names and partition keys are
/// compared byte for byte, whatever the server's collations.
///
/// Call [`receive`](Self::receive) first in the transaction: its insert
/// takes the lock on the (consumer, id) row, so a second delivery of the
/// same message received concurrently waits at its own insert until this
/// transaction ends, then sees the duplicate (or is fresh if this one
/// rolled back). Its reads lock what they read, so under InnoDB's default
/// `REPEATABLE READ` they see the latest committed rows, not the
/// transaction's snapshot. Such a wait can also end in a deadlock error
/// (1213), after which InnoDB has rolled the transaction back: retry it as
/// any other.
///
/// ```no_run
/// # async fn demo(message: outbox::OutboxMessage) -> outbox::Result<()> {
/// use outbox::{MySqlInbox, Receipt};
/// use sqlx::mysql::MySqlPool;
///
/// let pool = MySqlPool::connect("mysql://root@127.0.0.1:3306/test").await?;
/// let inbox = MySqlInbox::new(pool.clone());
/// inbox.migrate().await?; // creates the inbox tables in database `test`
///
/// let mut tx = pool.begin().await?;
/// // First in the transaction: a concurrent delivery of the same message
/// // waits here until this transaction ends.
/// match inbox.receive(&mut *tx, "payroll", &message).await? {
///     // Applied before: skip the effects.
///     Receipt::Duplicate => {
///         tx.rollback().await?;
///         return Ok(()); // acknowledge the delivery to the broker
///     }
///     Receipt::Gap { expected, got } => {
///         eprintln!("missing sequence numbers {expected}..{got}");
///     }
///     Receipt::Fresh => {}
/// }
/// sqlx::query("INSERT INTO payroll_events (topic, payload) VALUES (?, ?)")
///     .bind(message.topic())
///     .bind(message.payload())
///     .execute(&mut *tx)
///     .await?;
/// tx.commit().await?; // the id and the effects, or neither
/// // ... and only now acknowledge the delivery to the broker.
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MySqlInbox {
    inner: Arc<Inner>,
}

struct Inner {
    pool: MySqlPool,
    names: InboxNames,
    sql: Sql,
}

inbox_api!(MySqlInbox, MySqlPool, MySql);

/// Configures a [`MySqlInbox`].
#[derive(Debug)]
pub struct MySqlInboxBuilder {
    pool: MySqlPool,
    prefix: String,
}

impl MySqlInboxBuilder {
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
    /// [`Error::InvalidIdentifier`](crate::Error::InvalidIdentifier) if the table prefix is not a valid identifier.
    pub fn build(self) -> Result<MySqlInbox> {
        let names = InboxNames::mysql(&self.prefix)?;
        let sql = Sql::new(&names);
        Ok(MySqlInbox {
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
    key_state: String,
    purge: String,
    last_sequence: String,
}

impl Sql {
    fn new(n: &InboxNames) -> Self {
        Self {
            // IGNORE only ever swallows the duplicate key: the values are
            // checked before they are sent.
            insert: n.render(
                "INSERT IGNORE INTO {inbox_messages} (consumer, message_id, received_at) \
                 VALUES (?, ?, ?)",
            ),
            // Advances only to a higher number, recording the message that
            // set it and the number it replaced. MySQL assigns left to
            // right, so `last_sequence` (assigned last) is still the old
            // number in the other assignments. A stale number changes only
            // `previous_sequence`, to `last_sequence`, which an advance never
            // leaves: the row then tells that this message did not advance
            // it, even if it is the very message that last did (redelivered
            // after its id was purged). Neither the upsert's row count (the
            // driver counts unchanged rows as found) nor RETURNING (MySQL
            // has none here) can tell. `VALUES()` rather than a row alias,
            // which MariaDB lacks.
            advance: n.render(
                "INSERT INTO {inbox_keys} \
                   (consumer, partition_key, last_sequence, previous_sequence, last_message, updated_at) \
                 VALUES (?, ?, ?, NULL, ?, ?) \
                 ON DUPLICATE KEY UPDATE \
                   previous_sequence = last_sequence, \
                   last_message = IF(last_sequence < VALUES(last_sequence), \
                                     VALUES(last_message), last_message), \
                   updated_at = IF(last_sequence < VALUES(last_sequence), \
                                   VALUES(updated_at), updated_at), \
                   last_sequence = GREATEST(last_sequence, VALUES(last_sequence))",
            ),
            // Reads the row back after the upsert, which holds its lock; a
            // locking read, so it sees the row as the upsert left it under
            // any isolation level.
            key_state: n.render(
                "SELECT last_sequence, previous_sequence, last_message FROM {inbox_keys} \
                 WHERE consumer = ? AND partition_key = ? FOR UPDATE",
            ),
            purge: n.render(
                "DELETE FROM {inbox_messages} WHERE received_at < ? \
                 ORDER BY received_at LIMIT ?",
            ),
            last_sequence: n.render(
                "SELECT last_sequence FROM {inbox_keys} \
                 WHERE consumer = ? AND partition_key = ?",
            ),
        }
    }
}

impl MySqlInbox {
    /// An inbox with default settings: tables prefixed `outbox_`.
    pub fn new(pool: MySqlPool) -> Self {
        Self::builder(pool)
            .build()
            .expect("the default prefix is a valid identifier")
    }

    /// Configures an inbox.
    pub fn builder(pool: MySqlPool) -> MySqlInboxBuilder {
        MySqlInboxBuilder {
            pool,
            prefix: "outbox_".to_owned(),
        }
    }

    /// Creates or upgrades the inbox's tables. Safe to run on every start
    /// and from several processes at once (serialized by a named lock,
    /// `GET_LOCK`). MySQL commits each DDL statement on its own, so a
    /// migration is not one transaction; its statements are written to be
    /// run again after a failure part way through. Tables at a newer
    /// version than this crate knows are
    /// [`Error::SchemaTooNew`](crate::Error::SchemaTooNew).
    ///
    /// # Errors
    ///
    /// [`Error::SchemaTooNew`](crate::Error::SchemaTooNew) if the inbox tables are at a newer version than this crate
    /// knows; [`Error::Database`](crate::Error::Database) if the database fails (running `migrate` again
    /// resumes where it stopped).
    pub async fn migrate(&self) -> Result<()> {
        let n = &self.inner.names;
        let set = MigrationSet::new(MIGRATIONS, &n.migrations, None, n);
        apply_migrations(&self.inner.pool, &set).await
    }

    /// Records that `consumer` received `message`, on the caller's
    /// connection: normally `&mut *tx` inside the transaction that applies
    /// the message's effects (call it first there, see [`MySqlInbox`]).
    /// Three statements on that connection when the message has a
    /// partition key and a sequence number and its id is new (record the
    /// id, advance the key, read the key back), one otherwise.
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
    /// before anything is sent; [`Error::Database`](crate::Error::Database) if the database fails. MySQL then
    /// undoes only the failed statement (all of the transaction after a
    /// deadlock), so roll the transaction back rather than commit it.
    pub async fn receive<C>(
        &self,
        mut conn: C,
        consumer: &str,
        message: &OutboxMessage,
    ) -> Result<Receipt>
    where
        C: DerefMut<Target = MySqlConnection>,
    {
        validate_consumer(consumer)?;
        let conn: &mut MySqlConnection = &mut conn;
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
        let id = message.id().as_uuid().as_bytes().to_vec();
        sqlx::query(&self.inner.sql.advance)
            .bind(consumer.as_bytes())
            .bind(key.as_bytes())
            .bind(sequence)
            .bind(id.clone())
            .bind(now)
            .execute(&mut *conn)
            .await?;
        let (last, previous, last_message): (i64, Option<i64>, Vec<u8>) =
            sqlx::query_as(&self.inner.sql.key_state)
                .bind(consumer.as_bytes())
                .bind(key.as_bytes())
                .fetch_one(&mut *conn)
                .await?;
        // This message set the key's number now: it is the key's last
        // message, and the number did not stay put (see `Sql::advance`).
        let advanced = last_message == id && last == sequence && previous != Some(last);
        Ok(classify(true, Some(sequence), advanced, previous))
    }

    async fn insert<'c, E>(
        &self,
        executor: E,
        consumer: &str,
        id: MessageId,
        now: DateTime<Utc>,
    ) -> Result<bool>
    where
        E: Executor<'c, Database = MySql>,
    {
        let done = sqlx::query(&self.inner.sql.insert)
            .bind(consumer.as_bytes())
            .bind(id.as_uuid().as_bytes().to_vec())
            .bind(now)
            .execute(executor)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes one batch of [`purge_before`](Self::purge_before).
    async fn purge_batch(&self, before: DateTime<Utc>, batch: i64) -> Result<u64> {
        // At READ COMMITTED: no gap lock holds consumers' receipts.
        let q = sqlx::query(&self.inner.sql.purge).bind(before).bind(batch);
        let done = execute_read_committed(&self.inner.pool, q).await?;
        Ok(done.rows_affected())
    }

    async fn read_last_sequence(&self, consumer: &str, key: &str) -> Result<Option<i64>> {
        let q = sqlx::query_scalar(&self.inner.sql.last_sequence).bind(consumer.as_bytes());
        Ok(q.bind(key.as_bytes())
            .fetch_optional(&self.inner.pool)
            .await?)
    }
}
