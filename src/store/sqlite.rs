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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};
use sqlx::{Executor, Row, Transaction};
use tokio::sync::Notify;
use uuid::Uuid;

use super::sealed::StoreOps;
use super::{
    check_schema_version, split_inserted, AckBatch, AckPlan, AckReport, Acquire, Claim, Claimed,
    DeadLetter, Heartbeat, Lease, Purge, Release, Renew, Store, StoreStats, TableNames, WakeSource,
};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::message::{BatchEnqueued, Enqueued, MessageId, NewMessage, OutboxMessage};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_core.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_key_sequences.sql"),
    ),
    (3, include_str!("../../migrations/sqlite/0003_changes.sql")),
];

/// The only bucket: SQLite has one writer, so one relay drains at a time.
const BUCKET: i32 = 0;

/// Columns bound per row by an insert.
const INSERT_COLUMNS: usize = 9;

/// Rows per statement in [`SqliteOutbox::enqueue_batch`], well below
/// SQLite's limit of 32766 bound parameters per statement.
const BATCH_CHUNK: usize = 2000;

const _: () = assert!(BATCH_CHUNK * INSERT_COLUMNS <= 32766);

const COLUMNS: &str = "seq, id, topic, partition_key, event_type, schema_version, payload, \
                       content_type, headers, created_at, attempts";

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
}

impl fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOutbox")
            .field("messages", &self.inner.names.messages)
            .finish_non_exhaustive()
    }
}

/// Configures a [`SqliteOutbox`].
#[derive(Debug)]
pub struct SqliteOutboxBuilder {
    pool: SqlitePool,
    prefix: String,
}

impl SqliteOutboxBuilder {
    /// A prefix for the table names (default `outbox_`), for several
    /// outboxes in one database. Lowercase letters, digits and `_` only; may
    /// be empty.
    #[must_use]
    pub fn table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Validates the names and builds the outbox. Nothing is sent to the
    /// database.
    pub fn build(self) -> Result<SqliteOutbox> {
        let names = TableNames::new(None, &self.prefix)?;
        let sql = Sql::new(&names);
        Ok(SqliteOutbox {
            inner: Arc::new(Inner {
                pool: self.pool,
                names,
                signal: Arc::new(Notify::new()),
                sql,
            }),
        })
    }
}

/// SQL rendered once from the validated table names. Lists of values are
/// bound as one JSON array and read with `json_each`, so a statement never
/// approaches SQLite's bound-parameter limit.
struct Sql {
    insert: String,
    claim: String,
    fence: String,
    delete_published: String,
    copy_published: String,
    unblock: String,
    key_seq_read: String,
    key_seq_upsert: String,
    retry: String,
    copy_dead: String,
    delete_seqs: String,
    block: String,
    heartbeat_up: String,
    heartbeat_gone: String,
    heartbeat_count: String,
    renew: String,
    acquire: String,
    release: String,
    leave: String,
    bucket_count: String,
    stats: String,
    purge: String,
}

impl Sql {
    fn new(n: &TableNames) -> Self {
        let seqs = "(SELECT value FROM json_each(?))";
        Self {
            insert: n.render(
                "INSERT INTO {messages} (id, topic, partition_key, event_type, schema_version, \
                 payload, content_type, headers, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (id) DO NOTHING RETURNING seq",
            ),
            claim: n.render(&format!(
                "SELECT {COLUMNS} FROM {{messages}} m \
                 WHERE (m.available_at IS NULL OR m.available_at <= ?) \
                 AND NOT EXISTS (SELECT 1 FROM {{blocked}} k \
                     WHERE k.partition_key = m.partition_key AND k.seq < m.seq) \
                 AND m.seq NOT IN (SELECT value FROM json_each(?)) \
                 ORDER BY m.seq LIMIT ?"
            )),
            // A write as the first statement of the acknowledgement: the
            // transaction holds the write lock from here on.
            fence: n.render(
                "UPDATE {leases} SET epoch = epoch WHERE bucket = ? AND owner = ? AND epoch = ?",
            ),
            delete_published: n.render(&format!("DELETE FROM {{messages}} WHERE seq IN {seqs}")),
            copy_published: n.render(&format!(
                "INSERT INTO {{published}} ({COLUMNS}, published_at) \
                 SELECT seq, id, topic, partition_key, event_type, schema_version, payload, \
                        content_type, headers, created_at, attempts + 1, ? \
                 FROM {{messages}} WHERE seq IN {seqs}"
            )),
            key_seq_read: n.render(
                "SELECT partition_key, last_sequence FROM {key_sequences} \
                 WHERE partition_key IN (SELECT value FROM json_each(?))",
            ),
            // ?1: updated_at, ?2: [[key, number], ...]
            key_seq_upsert: n.render(
                "INSERT INTO {key_sequences} (partition_key, last_sequence, updated_at) \
                 SELECT json_extract(value, '$[0]'), max(json_extract(value, '$[1]')), ? \
                 FROM json_each(?) WHERE true GROUP BY 1 \
                 ON CONFLICT (partition_key) DO UPDATE \
                 SET last_sequence = max({key_sequences}.last_sequence, excluded.last_sequence), \
                     updated_at = excluded.updated_at",
            ),
            // [[key, seq], ...]
            unblock: n.render(
                "DELETE FROM {blocked} WHERE EXISTS (SELECT 1 FROM json_each(?) u \
                 WHERE json_extract(u.value, '$[0]') = {blocked}.partition_key \
                   AND json_extract(u.value, '$[1]') = {blocked}.seq)",
            ),
            // [[seq, attempts, at, error], ...]
            retry: n.render(
                "UPDATE {messages} SET attempts = u.attempts, available_at = u.at, \
                 last_error = u.err \
                 FROM (SELECT json_extract(value, '$[0]') AS seq, \
                              json_extract(value, '$[1]') AS attempts, \
                              json_extract(value, '$[2]') AS at, \
                              json_extract(value, '$[3]') AS err \
                       FROM json_each(?)) u \
                 WHERE {messages}.seq = u.seq",
            ),
            // ?1: dead_at, ?2: [[seq, attempts, error], ...]
            copy_dead: n.render(&format!(
                "INSERT INTO {{dead_letters}} ({COLUMNS}, last_error, dead_at) \
                 SELECT m.seq, m.id, m.topic, m.partition_key, m.event_type, m.schema_version, \
                        m.payload, m.content_type, m.headers, m.created_at, u.attempts, u.err, ? \
                 FROM {{messages}} m \
                 JOIN (SELECT json_extract(value, '$[0]') AS seq, \
                              json_extract(value, '$[1]') AS attempts, \
                              json_extract(value, '$[2]') AS err \
                       FROM json_each(?)) u ON m.seq = u.seq WHERE true \
                 ON CONFLICT (id) DO UPDATE SET {}",
                super::DEAD_LETTER_UPSERT
            )),
            delete_seqs: n.render(&format!("DELETE FROM {{messages}} WHERE seq IN {seqs}")),
            // ?1: since, ?2: [[key, seq], ...]. `WHERE true` resolves the
            // parser's ambiguity between a join's ON and the upsert.
            block: n.render(
                "INSERT INTO {blocked} (partition_key, seq, since) \
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ? \
                 FROM json_each(?) WHERE true \
                 ON CONFLICT (partition_key) DO UPDATE \
                 SET seq = min({blocked}.seq, excluded.seq)",
            ),
            heartbeat_up: n.render(
                "INSERT INTO {relays} (relay_id, expires_at) VALUES (?, ?) \
                 ON CONFLICT (relay_id) DO UPDATE SET expires_at = excluded.expires_at",
            ),
            heartbeat_gone: n.render("DELETE FROM {relays} WHERE expires_at < ?"),
            heartbeat_count: n
                .render("SELECT count(*) FROM {relays} WHERE expires_at > ? AND relay_id <> ?"),
            renew: n.render(
                "UPDATE {leases} SET expires_at = ? \
                 WHERE bucket = ? AND epoch = ? AND owner = ? \
                 RETURNING bucket, epoch",
            ),
            acquire: n.render(
                "UPDATE {leases} SET owner = ?, epoch = epoch + 1, expires_at = ? \
                 WHERE expires_at < ? AND bucket IN (\
                     SELECT bucket FROM {leases} WHERE expires_at < ? \
                     ORDER BY bucket LIMIT ?) \
                 RETURNING bucket, epoch",
            ),
            release: n.render(
                "UPDATE {leases} SET owner = NULL, expires_at = 0 \
                 WHERE bucket = ? AND epoch = ? AND owner = ?",
            ),
            leave: n.render("DELETE FROM {relays} WHERE relay_id = ?"),
            bucket_count: n.render("SELECT count(*) FROM {leases}"),
            stats: n.render(
                "SELECT (SELECT count(*) FROM {messages}), \
                        (SELECT min(created_at) FROM {messages}), \
                        (SELECT count(*) FROM {dead_letters})",
            ),
            purge: n.render(
                "DELETE FROM {published} WHERE seq IN (\
                   SELECT seq FROM {published} WHERE published_at < ? ORDER BY published_at \
                   LIMIT ?)",
            ),
        }
    }

    /// One multi-row insert per chunk, as one multi-statement query.
    fn insert_batch(n: &TableNames, chunks: impl Iterator<Item = usize>) -> String {
        let mut sql = String::new();
        for rows in chunks {
            sql.push_str(&n.render(
                "INSERT INTO {messages} (id, topic, partition_key, event_type, schema_version, \
                 payload, content_type, headers, created_at) VALUES ",
            ));
            for i in 0..rows {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?)");
            }
            sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id;\n");
        }
        sql
    }
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
        SqliteOutboxBuilder {
            pool,
            prefix: "outbox_".to_owned(),
        }
    }

    /// The pool the relay and the administrative methods use.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    pub(crate) fn names(&self) -> &TableNames {
        &self.inner.names
    }

    /// Creates or upgrades the crate's tables, in one transaction. Safe to
    /// run on every start and from several processes at once (SQLite
    /// serializes the writers).
    pub async fn migrate(&self) -> Result<()> {
        let n = &self.inner.names;
        // Outside the transaction, so that the transaction can start with a
        // write (see the module documentation). Harmless if the rest fails.
        sqlx::query(&n.render(
            "CREATE TABLE IF NOT EXISTS {migrations} (version INTEGER PRIMARY KEY, \
             applied_at INTEGER NOT NULL)",
        ))
        .execute(&self.inner.pool)
        .await?;
        let mut tx = self.inner.pool.begin().await?;
        // Takes the write lock: concurrent migrations wait here, so only one
        // applies each version.
        sqlx::query(&n.render("DELETE FROM {migrations} WHERE version < 0"))
            .execute(&mut *tx)
            .await?;
        let current: Option<i64> =
            sqlx::query_scalar(&n.render("SELECT max(version) FROM {migrations}"))
                .fetch_one(&mut *tx)
                .await?;
        let current = current.unwrap_or(0);
        check_schema_version(Some(current), MIGRATIONS)?;
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            // Several statements: `execute` on a string without arguments
            // runs them all (and, unlike `raw_sql`, keeps the future `Send`).
            tx.execute(n.render(sql).as_str()).await?;
            sqlx::query(&n.render("INSERT INTO {migrations} (version, applied_at) VALUES (?, ?)"))
                .bind(version)
                .bind(micros(Utc::now()))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes one message with the caller's executor, normally `&mut *tx`
    /// inside the transaction that holds the domain change.
    ///
    /// An id already in the outbox is reported as [`Enqueued::Duplicate`]
    /// without an error, so the caller's transaction stays usable.
    pub async fn enqueue<'c, E>(&self, executor: E, message: NewMessage) -> Result<Enqueued>
    where
        E: Executor<'c, Database = Sqlite>,
    {
        message.validate()?;
        let id = message.id;
        let headers = message.headers_json();
        let seq: Option<i64> = sqlx::query_scalar(&self.inner.sql.insert)
            .bind(id.as_uuid().as_bytes().to_vec())
            .bind(message.topic)
            .bind(message.partition_key)
            .bind(message.event_type)
            .bind(message.schema_version)
            .bind(message.payload)
            .bind(message.content_type)
            .bind(headers)
            .bind(micros(Utc::now()))
            .fetch_optional(executor)
            .await?;
        Ok(match seq {
            Some(_) => Enqueued::Inserted(id),
            None => Enqueued::Duplicate(id),
        })
    }

    /// Writes many messages in the given order (so messages of one key keep
    /// their order): one multi-row statement per 2000 messages, all sent
    /// with the caller's executor in one call.
    ///
    /// Ids already present, or repeated within the batch, are reported in
    /// [`BatchEnqueued::duplicates`].
    pub async fn enqueue_batch<'c, E>(
        &self,
        executor: E,
        messages: impl IntoIterator<Item = NewMessage>,
    ) -> Result<BatchEnqueued>
    where
        E: Executor<'c, Database = Sqlite>,
    {
        let messages: Vec<NewMessage> = messages.into_iter().collect();
        if messages.is_empty() {
            return Ok(BatchEnqueued::default());
        }
        for m in &messages {
            m.validate()?;
        }
        let order: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        let len = messages.len();
        let chunks = (0..len)
            .step_by(BATCH_CHUNK)
            .map(|start| (len - start).min(BATCH_CHUNK));
        let sql = Sql::insert_batch(&self.inner.names, chunks);
        let created_at = micros(Utc::now());
        let mut q = sqlx::query_scalar::<_, Vec<u8>>(&sql);
        for m in messages {
            let headers = m.headers_json();
            q = q
                .bind(m.id.as_uuid().as_bytes().to_vec())
                .bind(m.topic)
                .bind(m.partition_key)
                .bind(m.event_type)
                .bind(m.schema_version)
                .bind(m.payload)
                .bind(m.content_type)
                .bind(headers)
                .bind(created_at);
        }
        // The text depends on the batch's size: do not fill the statement
        // cache with one entry per size.
        let inserted = q.persistent(false).fetch_all(executor).await?;
        let inserted = inserted
            .iter()
            .map(|b| uuid_from_bytes(b))
            .collect::<Result<Vec<Uuid>>>()?;
        Ok(split_inserted(order, inserted))
    }

    /// Enqueues a typed event: one line for the common case.
    pub async fn publish_event<'c, E, V>(&self, executor: E, event: &V) -> Result<Enqueued>
    where
        E: Executor<'c, Database = Sqlite>,
        V: Event + ?Sized,
    {
        self.enqueue(executor, NewMessage::from_event(event)?).await
    }

    /// Commits the caller's transaction, then wakes the relays in this
    /// process. Equivalent to `tx.commit()` plus a prompt wake-up; relays
    /// in other processes find the messages on their poll.
    pub async fn commit(&self, tx: Transaction<'_, Sqlite>) -> Result<()> {
        tx.commit().await?;
        self.wake();
        Ok(())
    }

    /// Wakes the relays in this process now, as after a commit.
    pub fn wake(&self) {
        self.inner.signal.notify_waiters();
        self.inner.signal.notify_one();
    }

    /// Dead letters, oldest first.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(&self.inner.names.render(&format!(
            "SELECT {COLUMNS}, last_error, dead_at FROM {{dead_letters}} ORDER BY seq LIMIT ?"
        )))
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    message: message_from_row(r)?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    dead_at: time_from_micros(r.try_get("dead_at")?)?,
                })
            })
            .collect()
    }

    /// Sends a dead letter again: it returns to the outbox at its original
    /// position with its attempts reset, ahead of any later message of its
    /// key. Writes in its own transaction.
    pub async fn replay_dead_letter(&self, id: MessageId) -> Result<()> {
        let n = self.replay_where("id = ?", Some(id)).await?;
        if n == 0 {
            return Err(Error::DeadLetterNotFound(id));
        }
        Ok(())
    }

    /// Sends every dead letter again; returns how many. Writes in its own
    /// transaction.
    pub async fn replay_all_dead_letters(&self) -> Result<u64> {
        self.replay_where("1", None).await
    }

    async fn replay_where(&self, filter: &str, id: Option<MessageId>) -> Result<u64> {
        let n = &self.inner.names;
        let id = id.map(|id| id.as_uuid().as_bytes().to_vec());
        // The insert comes first, so the transaction starts with a write.
        let statements = [
            n.render(&format!(
                "INSERT INTO {{messages}} ({COLUMNS}) \
                 SELECT seq, id, topic, partition_key, event_type, schema_version, payload, \
                        content_type, headers, created_at, 0 \
                 FROM {{dead_letters}} WHERE {filter}"
            )),
            n.render(&format!(
                "DELETE FROM {{blocked}} WHERE EXISTS (SELECT 1 FROM {{dead_letters}} d \
                 WHERE d.partition_key = {{blocked}}.partition_key \
                   AND d.seq = {{blocked}}.seq AND {filter})"
            )),
            n.render(&format!("DELETE FROM {{dead_letters}} WHERE {filter}")),
        ];
        let mut tx = self.inner.pool.begin().await?;
        let mut moved = 0;
        for (i, sql) in statements.iter().enumerate() {
            let mut q = sqlx::query(sql);
            if let Some(id) = &id {
                q = q.bind(id.clone());
            }
            let done = q.execute(&mut *tx).await?;
            if i == 0 {
                moved = done.rows_affected();
            }
        }
        tx.commit().await?;
        if moved > 0 {
            self.wake();
        }
        Ok(moved)
    }

    /// Deletes a dead letter for good and unblocks its key. Writes in its
    /// own transaction.
    pub async fn discard_dead_letter(&self, id: MessageId) -> Result<()> {
        let n = &self.inner.names;
        let mut tx = self.inner.pool.begin().await?;
        let gone: Option<(Option<String>, i64)> = sqlx::query_as(
            &n.render("DELETE FROM {dead_letters} WHERE id = ? RETURNING partition_key, seq"),
        )
        .bind(id.as_uuid().as_bytes().to_vec())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((key, seq)) = gone else {
            return Err(Error::DeadLetterNotFound(id));
        };
        if let Some(key) = key {
            sqlx::query(&n.render("DELETE FROM {blocked} WHERE partition_key = ? AND seq = ?"))
                .bind(key)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.wake();
        Ok(())
    }

    /// Number of messages waiting to be published (dead letters excluded).
    pub async fn pending_count(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar(&self.inner.names.render("SELECT count(*) FROM {messages}"))
                .fetch_one(&self.inner.pool)
                .await?,
        )
    }

    /// Retained published messages, oldest first (empty unless the relay
    /// keeps published messages).
    pub async fn published(&self, limit: i64) -> Result<Vec<OutboxMessage>> {
        let rows = sqlx::query(&self.inner.names.render(&format!(
            "SELECT {COLUMNS} FROM {{published}} ORDER BY seq LIMIT ?"
        )))
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(message_from_row).collect()
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn micros_after(t: DateTime<Utc>, d: Duration) -> i64 {
    micros(t).saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn decode_error(msg: String) -> Error {
    Error::Database(sqlx::Error::Decode(msg.into()))
}

fn time_from_micros(us: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| decode_error(format!("time out of range: {us} µs since the epoch")))
}

fn uuid_from_bytes(b: &[u8]) -> Result<Uuid> {
    Uuid::from_slice(b).map_err(|e| decode_error(format!("invalid message id: {e}")))
}

fn message_from_row(r: &SqliteRow) -> Result<OutboxMessage> {
    let id: Vec<u8> = r.try_get("id")?;
    let headers: Option<String> = r.try_get("headers")?;
    let attempts: i32 = r.try_get("attempts")?;
    Ok(OutboxMessage {
        seq: r.try_get("seq")?,
        id: MessageId::from_uuid(uuid_from_bytes(&id)?),
        topic: r.try_get("topic")?,
        partition_key: r.try_get("partition_key")?,
        event_type: r.try_get("event_type")?,
        schema_version: r.try_get("schema_version")?,
        payload: r.try_get("payload")?,
        content_type: r.try_get("content_type")?,
        headers: OutboxMessage::headers_from_json(headers.as_deref()),
        created_at: time_from_micros(r.try_get("created_at")?)?,
        attempt: attempts + 1,
        key_sequence: None,
    })
}

fn leases_from_rows(rows: &[SqliteRow]) -> Result<Vec<Lease>> {
    rows.iter()
        .map(|r| {
            Ok(Lease {
                bucket: r.try_get(0)?,
                epoch: r.try_get(1)?,
            })
        })
        .collect()
}

fn json(value: &serde_json::Value) -> String {
    value.to_string()
}

impl Store for SqliteOutbox {}

#[async_trait]
impl StoreOps for SqliteOutbox {
    async fn check_schema(&self) -> Result<()> {
        let found: Option<i64> = sqlx::query_scalar(
            &self
                .inner
                .names
                .render("SELECT max(version) FROM {migrations}"),
        )
        .fetch_one(&self.inner.pool)
        .await?;
        check_schema_version(found, MIGRATIONS)
    }

    async fn bucket_count(&self) -> Result<i32> {
        Ok(sqlx::query_scalar(&self.inner.sql.bucket_count)
            .fetch_one(&self.inner.pool)
            .await?)
    }

    async fn heartbeat(&self, p: Heartbeat) -> Result<usize> {
        let Heartbeat { relay, ttl } = p;
        let now = Utc::now();
        let relay = relay.as_bytes().to_vec();
        let mut tx = self.inner.pool.begin().await?;
        // Starts with the write.
        sqlx::query(&self.inner.sql.heartbeat_up)
            .bind(&relay)
            .bind(micros_after(now, ttl))
            .execute(&mut *tx)
            .await?;
        let gone = micros(now)
            .saturating_sub(i64::try_from(ttl.saturating_mul(10).as_micros()).unwrap_or(i64::MAX));
        sqlx::query(&self.inner.sql.heartbeat_gone)
            .bind(gone)
            .execute(&mut *tx)
            .await?;
        let others: i64 = sqlx::query_scalar(&self.inner.sql.heartbeat_count)
            .bind(micros(now))
            .bind(&relay)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((others + 1).max(1) as usize)
    }

    async fn renew(&self, p: Renew<'_>) -> Result<Vec<Lease>> {
        let Renew { relay, leases, ttl } = p;
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let expires = micros_after(Utc::now(), ttl);
        let relay = relay.as_bytes().to_vec();
        let mut kept = Vec::with_capacity(leases.len());
        // Each lease is renewed by one atomic statement; there is one
        // bucket, so this is a single statement in practice.
        for l in leases {
            let rows = sqlx::query(&self.inner.sql.renew)
                .bind(expires)
                .bind(l.bucket)
                .bind(l.epoch)
                .bind(&relay)
                .fetch_all(&self.inner.pool)
                .await?;
            kept.extend(leases_from_rows(&rows)?);
        }
        Ok(kept)
    }

    async fn acquire(&self, p: Acquire) -> Result<Vec<Lease>> {
        let Acquire { relay, max, ttl } = p;
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = Utc::now();
        let rows = sqlx::query(&self.inner.sql.acquire)
            .bind(relay.as_bytes().to_vec())
            .bind(micros_after(now, ttl))
            .bind(micros(now))
            .bind(micros(now))
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await?;
        leases_from_rows(&rows)
    }

    async fn release(&self, p: Release<'_>) -> Result<()> {
        let Release { relay, leases } = p;
        let relay = relay.as_bytes().to_vec();
        for l in leases {
            sqlx::query(&self.inner.sql.release)
                .bind(l.bucket)
                .bind(l.epoch)
                .bind(&relay)
                .execute(&self.inner.pool)
                .await?;
        }
        Ok(())
    }

    async fn leave(&self, relay: Uuid) -> Result<()> {
        sqlx::query(&self.inner.sql.leave)
            .bind(relay.as_bytes().to_vec())
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    async fn claim(&self, p: Claim<'_>) -> Result<Vec<Claimed>> {
        let Claim {
            buckets,
            now,
            limit,
            exclude,
            ..
        } = p;
        // Every message is in the one bucket.
        if buckets.is_some_and(|b| !b.contains(&BUCKET)) {
            return Ok(Vec::new());
        }
        // Positions as a JSON array: SQLite has no array parameters.
        let mut excluded = String::with_capacity(exclude.len() * 8 + 2);
        excluded.push('[');
        for (i, seq) in exclude.iter().enumerate() {
            if i > 0 {
                excluded.push(',');
            }
            excluded.push_str(&seq.to_string());
        }
        excluded.push(']');
        let rows = sqlx::query(&self.inner.sql.claim)
            .bind(micros(now))
            .bind(excluded)
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    message: message_from_row(r)?,
                    bucket: BUCKET,
                })
            })
            .collect()
    }

    async fn ack(&self, p: AckBatch<'_>) -> Result<AckReport> {
        let AckBatch {
            relay,
            leases,
            acks,
            retain,
            now,
        } = p;
        if acks.is_empty() {
            return Ok(AckReport::default());
        }
        let wanted: HashSet<i32> = acks.iter().map(|a| a.bucket).collect();
        let held: Vec<&Lease> = leases
            .iter()
            .filter(|l| wanted.contains(&l.bucket))
            .collect();
        if held.is_empty() {
            return Ok(AckReport {
                applied: 0,
                fenced: acks.len(),
                fenced_buckets: wanted.into_iter().collect(),
            });
        }
        let relay = relay.as_bytes().to_vec();
        let sql = &self.inner.sql;
        let mut tx = self.inner.pool.begin().await?;
        // The fence is the transaction's first statement and a write, so the
        // write lock is held from here and no other relay can take the lease
        // before the commit.
        let mut valid = HashSet::new();
        for l in held {
            let done = sqlx::query(&sql.fence)
                .bind(l.bucket)
                .bind(&relay)
                .bind(l.epoch)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() > 0 {
                valid.insert(l.bucket);
            }
        }
        let plan = AckPlan::new(acks, |b| valid.contains(&b));
        let report = plan.report.clone();
        let published = &plan.published;
        let pairs = |v: &[(&str, i64)]| serde_json::json!(v);
        let key_seqs = &plan.key_sequences;
        let unblock = &plan.unblock;
        let block = &plan.block;
        let retry: Vec<serde_json::Value> = plan
            .retry
            .iter()
            .map(|(seq, attempts, at, error)| {
                serde_json::json!([seq, attempts, micros(*at), error])
            })
            .collect();
        let dead: Vec<serde_json::Value> = plan
            .dead
            .iter()
            .map(|(seq, attempts, error)| serde_json::json!([seq, attempts, error]))
            .collect();
        let dead_seqs: Vec<i64> = plan.dead.iter().map(|d| d.0).collect();
        if report.applied == 0 {
            tx.rollback().await?;
            return Ok(report);
        }
        if !published.is_empty() {
            let seqs = json(&serde_json::json!(published));
            if retain {
                sqlx::query(&sql.copy_published)
                    .bind(micros(now))
                    .bind(&seqs)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(&sql.delete_published)
                .bind(&seqs)
                .execute(&mut *tx)
                .await?;
        }
        if !key_seqs.is_empty() {
            sqlx::query(&sql.key_seq_upsert)
                .bind(micros(now))
                .bind(json(&pairs(key_seqs)))
                .execute(&mut *tx)
                .await?;
        }
        if !unblock.is_empty() {
            sqlx::query(&sql.unblock)
                .bind(json(&pairs(unblock)))
                .execute(&mut *tx)
                .await?;
        }
        if !retry.is_empty() {
            sqlx::query(&sql.retry)
                .bind(json(&serde_json::Value::Array(retry)))
                .execute(&mut *tx)
                .await?;
        }
        if !dead.is_empty() {
            sqlx::query(&sql.copy_dead)
                .bind(micros(Utc::now()))
                .bind(json(&serde_json::Value::Array(dead)))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&sql.delete_seqs)
                .bind(json(&serde_json::json!(dead_seqs)))
                .execute(&mut *tx)
                .await?;
        }
        if !block.is_empty() {
            sqlx::query(&sql.block)
                .bind(micros(now))
                .bind(json(&pairs(block)))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    async fn key_sequences(&self, keys: &[String]) -> Result<HashMap<String, i64>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(&self.inner.sql.key_seq_read)
            .bind(json(&serde_json::json!(keys)))
            .fetch_all(&self.inner.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    async fn purge_published(&self, p: Purge) -> Result<u64> {
        let Purge { before, limit } = p;
        Ok(sqlx::query(&self.inner.sql.purge)
            .bind(micros(before))
            .bind(limit)
            .execute(&self.inner.pool)
            .await?
            .rows_affected())
    }

    async fn stats(&self) -> Result<StoreStats> {
        let row = sqlx::query(&self.inner.sql.stats)
            .fetch_one(&self.inner.pool)
            .await?;
        let oldest: Option<i64> = row.try_get(1)?;
        let now = micros(Utc::now());
        Ok(StoreStats {
            pending: row.try_get(0)?,
            oldest_pending_age: oldest
                .map(|t| Duration::from_micros(u64::try_from(now.saturating_sub(t)).unwrap_or(0))),
            dead_letters: row.try_get(2)?,
            dead_tuples: None,
            oldest_xmin_age: None,
            autovacuum: None,
        })
    }

    async fn vacuum(&self) -> Result<()> {
        Ok(())
    }

    fn local_signal(&self) -> Arc<Notify> {
        self.inner.signal.clone()
    }

    async fn listen(&self) -> Result<Option<Box<dyn WakeSource>>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use sqlx::sqlite::SqlitePoolOptions;

    use super::*;
    use crate::store::{Ack, Disposition};

    async fn outbox() -> SqliteOutbox {
        // One connection that never closes: the in-memory database lives
        // as long as it does.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let outbox = SqliteOutbox::new(pool);
        outbox.migrate().await.unwrap();
        outbox
    }

    async fn enqueue(outbox: &SqliteOutbox, key: Option<&str>) -> MessageId {
        let mut m = NewMessage::bytes("t", b"x".to_vec());
        if let Some(k) = key {
            m = m.with_partition_key(k);
        }
        outbox.enqueue(outbox.pool(), m).await.unwrap().id()
    }

    fn ack(c: &Claimed, disposition: Disposition) -> Ack {
        Ack {
            seq: c.message.seq,
            bucket: c.bucket,
            partition_key: c.message.partition_key.clone(),
            attempts: c.message.attempt,
            retried: c.message.attempt > 1,
            key_sequence: None,
            disposition,
        }
    }

    fn published(claimed: &[Claimed]) -> Vec<Ack> {
        claimed
            .iter()
            .map(|c| ack(c, Disposition::Published))
            .collect()
    }

    const TTL: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn one_bucket_with_fenced_leases() {
        let o = outbox().await;
        let (r1, r2) = (Uuid::now_v7(), Uuid::now_v7());
        o.check_schema().await.unwrap();
        assert_eq!(o.bucket_count().await.unwrap(), 1);
        assert!(o.listen().await.unwrap().is_none());
        assert_eq!(
            o.heartbeat(Heartbeat {
                relay: r1,
                ttl: TTL
            })
            .await
            .unwrap(),
            1
        );
        assert_eq!(
            o.heartbeat(Heartbeat {
                relay: r2,
                ttl: TTL
            })
            .await
            .unwrap(),
            2
        );
        assert_eq!(
            o.heartbeat(Heartbeat {
                relay: r1,
                ttl: TTL
            })
            .await
            .unwrap(),
            2
        );

        let l1 = o
            .acquire(Acquire {
                relay: r1,
                max: 1,
                ttl: TTL,
            })
            .await
            .unwrap();
        assert_eq!(
            l1,
            vec![Lease {
                bucket: 0,
                epoch: 1
            }]
        );
        assert!(o
            .acquire(Acquire {
                relay: r2,
                max: 1,
                ttl: TTL
            })
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            o.renew(Renew {
                relay: r1,
                leases: &l1,
                ttl: TTL
            })
            .await
            .unwrap(),
            l1
        );

        enqueue(&o, Some("a")).await;
        enqueue(&o, None).await;
        let claimed = o
            .claim(Claim {
                buckets: None,
                bucket_count: 1,
                now: Utc::now(),
                limit: 10,
                exclude: &[],
            })
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        assert!(claimed.iter().all(|c| c.bucket == 0));
        assert!(o
            .claim(Claim {
                buckets: Some(&[3]),
                bucket_count: 1,
                now: Utc::now(),
                limit: 10,
                exclude: &[]
            })
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            o.claim(Claim {
                buckets: Some(&[0]),
                bucket_count: 1,
                now: Utc::now(),
                limit: 10,
                exclude: &[]
            })
            .await
            .unwrap()
            .len(),
            2
        );
        // Positions in flight are left out of a claim.
        let rest = o
            .claim(Claim {
                buckets: None,
                bucket_count: 1,
                now: Utc::now(),
                limit: 10,
                exclude: &[claimed[0].message.seq],
            })
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].message.seq, claimed[1].message.seq);

        // Wrong owner, wrong epoch, no lease: nothing applied.
        let acks = published(&claimed);
        for (relay, leases) in [
            (r2, l1.clone()),
            (
                r1,
                vec![Lease {
                    bucket: 0,
                    epoch: 2,
                }],
            ),
            (r1, vec![]),
        ] {
            let rep = o
                .ack(AckBatch {
                    relay,
                    leases: &leases,
                    acks: &acks,
                    retain: false,
                    now: Utc::now(),
                })
                .await
                .unwrap();
            assert_eq!(
                rep,
                AckReport {
                    applied: 0,
                    fenced: 2,
                    fenced_buckets: vec![0],
                }
            );
        }
        assert_eq!(o.pending_count().await.unwrap(), 2);

        // Hand-over: the epoch grows and the old holder is fenced.
        o.release(Release {
            relay: r2,
            leases: &l1,
        })
        .await
        .unwrap(); // not r2's: no effect
        assert!(o
            .acquire(Acquire {
                relay: r2,
                max: 1,
                ttl: TTL
            })
            .await
            .unwrap()
            .is_empty());
        o.release(Release {
            relay: r1,
            leases: &l1,
        })
        .await
        .unwrap();
        let l2 = o
            .acquire(Acquire {
                relay: r2,
                max: 1,
                ttl: TTL,
            })
            .await
            .unwrap();
        assert_eq!(
            l2,
            vec![Lease {
                bucket: 0,
                epoch: 2
            }]
        );
        assert!(o
            .renew(Renew {
                relay: r1,
                leases: &l1,
                ttl: TTL
            })
            .await
            .unwrap()
            .is_empty());
        let rep = o
            .ack(AckBatch {
                relay: r1,
                leases: &l1,
                acks: &acks,
                retain: false,
                now: Utc::now(),
            })
            .await
            .unwrap();
        assert_eq!(rep.fenced, 2);
        let rep = o
            .ack(AckBatch {
                relay: r2,
                leases: &l2,
                acks: &acks,
                retain: false,
                now: Utc::now(),
            })
            .await
            .unwrap();
        assert_eq!(
            rep,
            AckReport {
                applied: 2,
                fenced: 0,
                fenced_buckets: vec![],
            }
        );
        assert_eq!(o.pending_count().await.unwrap(), 0);

        // An expired lease can be taken; a live one cannot.
        let short = o
            .acquire(Acquire {
                relay: r1,
                max: 1,
                ttl: TTL,
            })
            .await
            .unwrap();
        assert!(short.is_empty(), "r2's lease is live");
        o.release(Release {
            relay: r2,
            leases: &l2,
        })
        .await
        .unwrap();
        let l3 = o
            .acquire(Acquire {
                relay: r1,
                max: 1,
                ttl: Duration::from_millis(1),
            })
            .await
            .unwrap();
        assert_eq!(
            l3,
            vec![Lease {
                bucket: 0,
                epoch: 3
            }]
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        let l4 = o
            .acquire(Acquire {
                relay: r2,
                max: 1,
                ttl: TTL,
            })
            .await
            .unwrap();
        assert_eq!(
            l4,
            vec![Lease {
                bucket: 0,
                epoch: 4
            }]
        );
        assert!(o
            .renew(Renew {
                relay: r1,
                leases: &l3,
                ttl: TTL
            })
            .await
            .unwrap()
            .is_empty());

        o.leave(r1).await.unwrap();
        assert_eq!(
            o.heartbeat(Heartbeat {
                relay: r2,
                ttl: TTL
            })
            .await
            .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn retries_block_and_unblock_keys() {
        let o = outbox().await;
        let r = Uuid::now_v7();
        let leases = o
            .acquire(Acquire {
                relay: r,
                max: 1,
                ttl: TTL,
            })
            .await
            .unwrap();
        let first = enqueue(&o, Some("k")).await;
        let second = enqueue(&o, Some("k")).await;
        let free = enqueue(&o, None).await;
        let now = Utc::now();
        let claimed = o
            .claim(Claim {
                buckets: None,
                bucket_count: 1,
                now,
                limit: 10,
                exclude: &[],
            })
            .await
            .unwrap();
        assert_eq!(claimed.len(), 3);

        let later = now + chrono::Duration::hours(1);
        let retry = ack(
            &claimed[0],
            Disposition::Retry {
                at: later,
                error: "down \"quoted\"\n".into(),
                block_key: true,
            },
        );
        let rep = o
            .ack(AckBatch {
                relay: r,
                leases: &leases,
                acks: &[retry],
                retain: false,
                now,
            })
            .await
            .unwrap();
        assert_eq!(rep.applied, 1);
        let (attempts, at, err): (i32, i64, String) = sqlx::query_as(
            "SELECT attempts, available_at, last_error FROM outbox_messages ORDER BY seq LIMIT 1",
        )
        .fetch_one(o.pool())
        .await
        .unwrap();
        assert_eq!((attempts, at), (1, micros(later)));
        assert_eq!(err, "down \"quoted\"\n");

        // Not due yet, and the key is blocked behind it.
        let ids = |c: Vec<Claimed>| c.into_iter().map(|c| c.message.id).collect::<Vec<_>>();
        assert_eq!(
            ids(o
                .claim(Claim {
                    buckets: None,
                    bucket_count: 1,
                    now,
                    limit: 10,
                    exclude: &[]
                })
                .await
                .unwrap()),
            vec![free]
        );
        let due = o
            .claim(Claim {
                buckets: None,
                bucket_count: 1,
                now: later,
                limit: 10,
                exclude: &[],
            })
            .await
            .unwrap();
        assert_eq!(ids(due.clone()), vec![first, free]);
        assert_eq!(due[0].message.attempt, 2);
        let stats = o.stats().await.unwrap();
        assert_eq!(stats.pending, 3);
        assert!(stats.oldest_pending_age.is_some());
        assert_eq!(stats.dead_letters, 0);

        // Published after a retry: the key is unblocked.
        let rep = o
            .ack(AckBatch {
                relay: r,
                leases: &leases,
                acks: &published(&due[..1]),
                retain: true,
                now: later,
            })
            .await
            .unwrap();
        assert_eq!(rep.applied, 1);
        let next = o
            .claim(Claim {
                buckets: None,
                bucket_count: 1,
                now: later,
                limit: 10,
                exclude: &[],
            })
            .await
            .unwrap();
        assert_eq!(ids(next.clone()), vec![second, free]);
        let kept = o.published(10).await.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].id, first);

        // Dead with a block: the key stays blocked until the dead letter
        // is replayed.
        let dead = ack(
            &next[0],
            Disposition::Dead {
                error: "rejected".into(),
                block_key: true,
            },
        );
        o.ack(AckBatch {
            relay: r,
            leases: &leases,
            acks: &[dead],
            retain: false,
            now: later,
        })
        .await
        .unwrap();
        let third = enqueue(&o, Some("k")).await;
        assert_eq!(
            ids(o
                .claim(Claim {
                    buckets: None,
                    bucket_count: 1,
                    now: later,
                    limit: 10,
                    exclude: &[]
                })
                .await
                .unwrap()),
            vec![free]
        );
        let dl = o.dead_letters(10).await.unwrap();
        assert_eq!(dl.len(), 1);
        assert_eq!((dl[0].id(), dl[0].attempts), (second, 1));
        assert_eq!(dl[0].last_error, "rejected");
        assert_eq!(o.stats().await.unwrap().dead_letters, 1);
        o.replay_dead_letter(second).await.unwrap();
        let after = o
            .claim(Claim {
                buckets: None,
                bucket_count: 1,
                now: later,
                limit: 10,
                exclude: &[],
            })
            .await
            .unwrap();
        assert_eq!(ids(after.clone()), vec![second, free, third]);
        assert_eq!(after[0].message.attempt, 1);

        // Purge retained rows older than the cut-off.
        assert_eq!(
            o.purge_published(Purge {
                before: later,
                limit: 10
            })
            .await
            .unwrap(),
            0
        );
        let cutoff = later + chrono::Duration::seconds(1);
        assert_eq!(
            o.purge_published(Purge {
                before: cutoff,
                limit: 10
            })
            .await
            .unwrap(),
            1
        );
        assert!(o.published(10).await.unwrap().is_empty());
    }
}
