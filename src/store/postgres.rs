//! PostgreSQL backend.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::Connection;
use sqlx::{Executor, Row, Transaction};
use tokio::sync::Notify;
use uuid::Uuid;

use super::sealed::StoreOps;
use super::{
    check_schema_version, split_inserted, AckBatch, AckPlan, AckReport, Acquire, Claim, Claimed,
    DeadLetter, Disposition, Heartbeat, Lease, Purge, Release, Renew, Store, StoreStats,
    TableNames, WakeSource,
};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::message::{BatchEnqueued, Enqueued, MessageId, NewMessage, OutboxMessage};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_core.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_key_sequences.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_changes.sql"),
    ),
];

/// How a commit wakes relays in other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WakeUp {
    /// Relays in this process wake at once on [`PgOutbox::commit`]; relays
    /// elsewhere are woken by notifications spread thin over the commits:
    ///
    /// - The first enqueue after [`notify_interval`](PgOutboxBuilder::notify_interval)
    ///   (1 ms) without one carries a `pg_notify` in the caller's
    ///   transaction, delivered when it commits. Under load one transaction
    ///   in every so many pays for it, and no transaction of its own is
    ///   spent on waking relays.
    /// - A commit made through `PgOutbox::commit` that no later enqueue
    ///   covered within twice the interval (at least 1 ms), such as the
    ///   last of a burst, gets a `NOTIFY` of its own, sent on one
    ///   connection outside the pool (opened at the first such `NOTIFY`,
    ///   closed within a second of the outbox being dropped or its pool
    ///   closed).
    ///
    /// Transactions committed without `PgOutbox::commit` are woken by the
    /// next carried notification or found by the relay's poll, and so are
    /// commits just before an enqueue whose transaction rolled back with
    /// its notification.
    #[default]
    AfterCommit,
    /// Each enqueue adds a `pg_notify` to the producer's transaction:
    /// relays wake on every commit, however it is made, at the price of
    /// serializing commits on the notification queue (measured: about 40 %
    /// of write throughput at 8 writers).
    InTransaction,
    /// No `NOTIFY`: relays in this process wake on `PgOutbox::commit`,
    /// others on their poll interval.
    LocalOnly,
}

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
    wake_up: WakeUp,
    channel: String,
    lock_class: Option<i32>,
    signal: Arc<Notify>,
    remote: Arc<Notify>,
    notifier: OnceLock<()>,
    notify_interval: Duration,
    sql: Sql,
    /// Connections for the relay's claims, opened on first use.
    claim_pool: OnceLock<PgPool>,
    /// Wake-up bookkeeping, in microseconds since `epoch` (0: never): when
    /// the last enqueue that carried a `pg_notify` (or the last separate
    /// `NOTIFY`) was sent, and when the last commit through
    /// [`PgOutbox::commit`] returned.
    epoch: std::time::Instant,
    carried_at: AtomicU64,
    committed_at: AtomicU64,
}

impl fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOutbox")
            .field("messages", &self.inner.names.messages)
            .field("wake_up", &self.inner.wake_up)
            .field("commit_order_lock", &self.inner.lock_class.is_some())
            .finish_non_exhaustive()
    }
}

/// Configures a [`PgOutbox`].
#[derive(Debug)]
pub struct PgOutboxBuilder {
    pool: PgPool,
    schema: String,
    prefix: String,
    wake_up: WakeUp,
    commit_order_lock: bool,
    notify_interval: Duration,
}

impl PgOutboxBuilder {
    /// With [`WakeUp::AfterCommit`], the least time between two enqueues
    /// that carry a `pg_notify` (default 1 ms; see [`WakeUp::AfterCommit`]).
    /// A busy producer then adds about one notification per interval,
    /// whatever its commit rate. Zero makes every enqueue carry one, as
    /// [`WakeUp::InTransaction`] does.
    #[must_use]
    pub fn notify_interval(mut self, interval: Duration) -> Self {
        self.notify_interval = interval;
        self
    }

    /// The schema holding the crate's tables (default `outbox`; created by
    /// [`PgOutbox::migrate`]). Lowercase letters, digits and `_` only.
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// A prefix for the table names (default none), for several outboxes
    /// in one schema.
    #[must_use]
    pub fn table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How commits wake relays in other processes (default
    /// [`WakeUp::AfterCommit`]).
    #[must_use]
    pub fn wake_up(mut self, wake_up: WakeUp) -> Self {
        self.wake_up = wake_up;
        self
    }

    /// Whether enqueue takes a transaction-scoped advisory lock per
    /// partition key (default on).
    ///
    /// With it, two transactions that enqueue for the same key commit in
    /// the order they enqueued, so positions follow commit order and the
    /// relay publishes each key in commit order even when the producer does
    /// not otherwise serialize writes to that key. The lock is held from the
    /// enqueue to the commit and touches no table. Turn it off only if every
    /// producer already serializes writes per key (for example by locking
    /// the aggregate's row before enqueueing).
    #[must_use]
    pub fn commit_order_lock(mut self, on: bool) -> Self {
        self.commit_order_lock = on;
        self
    }

    /// Validates the names and builds the outbox. Nothing is sent to the
    /// database.
    pub fn build(self) -> Result<PgOutbox> {
        let names = TableNames::new(Some(&self.schema), &self.prefix)?;
        let channel = format!("outbox_{}_{}", self.schema, self.prefix);
        let channel: String = channel.chars().take(63).collect();
        let lock_class = self
            .commit_order_lock
            .then(|| fnv1a32(names.messages.as_bytes()));
        let sql = Sql::new(&names);
        Ok(PgOutbox {
            inner: Arc::new(Inner {
                pool: self.pool,
                names,
                wake_up: self.wake_up,
                channel,
                lock_class,
                signal: Arc::new(Notify::new()),
                remote: Arc::new(Notify::new()),
                notifier: OnceLock::new(),
                notify_interval: self.notify_interval,
                sql,
                claim_pool: OnceLock::new(),
                epoch: std::time::Instant::now(),
                carried_at: AtomicU64::new(0),
                committed_at: AtomicU64::new(0),
            }),
        })
    }
}

/// The advisory-lock class of an outbox's per-key locks: changes of an
/// entity take the same lock as messages of its partition key.
pub(crate) fn change_lock_class(names: &TableNames) -> i32 {
    fnv1a32(names.messages.as_bytes())
}

fn fnv1a32(bytes: &[u8]) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as i32
}

const COLUMNS: &str = "seq, id, topic, partition_key, event_type, schema_version, payload, \
                       content_type, headers, created_at, attempts";
/// Index of `headers::text` in the published and dead-letter reads.
const PUBLISHED_HEADERS: usize = 11;
const DEAD_HEADERS: usize = 13;

/// SQL rendered once from the validated table names.
struct Sql {
    insert: String,
    insert_notify: String,
    insert_batch: String,
    insert_batch_notify: String,
    claim_all: String,
    claim_buckets: String,
    ack_delete: String,
    ack_retain: String,
    fence: String,
    delete_published: String,
    move_published: String,
    unblock: String,
    key_seq_upsert: String,
    key_seq_read: String,
    retry: String,
    block: String,
    dead: String,
    heartbeat: String,
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
        // The same insert with a `pg_notify` in it ($10: channel), for
        // enqueues that carry the wake-up in the caller's transaction.
        let insert = |notify: &str, notify_ref: &str| {
            n.render(&format!(
                "WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock($9, hashtext($3))){notify} \
                 INSERT INTO {{messages}} (id, topic, partition_key, event_type, schema_version, \
                 payload, content_type, headers) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8::jsonb FROM l{notify_ref} \
                 ON CONFLICT (id) DO NOTHING"
            ))
        };
        let insert_batch = |notify: &str, notify_ref: &str| {
            n.render(&format!(
                "WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock($9, hashtext(k)) \
                   FROM (SELECT DISTINCT k FROM unnest($3::text[]) k \
                         WHERE k IS NOT NULL AND $9 IS NOT NULL ORDER BY k) s){notify} \
                 INSERT INTO {{messages}} (id, topic, partition_key, event_type, schema_version, \
                 payload, content_type, headers) \
                 SELECT u.id, u.topic, u.k, u.et, u.v, u.p, u.ct, u.h::jsonb \
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], \
                             $6::bytea[], $7::text[], $8::text[]) \
                      AS u(id, topic, k, et, v, p, ct, h){notify_ref} \
                 WHERE (SELECT count(*) FROM l) >= 0 \
                 ON CONFLICT (id) DO NOTHING RETURNING id"
            ))
        };
        let (notify, notify_ref) = (
            ", n AS MATERIALIZED (SELECT pg_notify($10, ''))",
            " CROSS JOIN n",
        );
        let bucket = "CASE WHEN m.partition_key IS NULL THEN (m.seq % $2)::int \
                      ELSE (hashtext(m.partition_key) & 2147483647) % $2 END";
        let claim_cols = "m.seq, m.id, m.topic, m.partition_key, m.event_type, m.schema_version, \
                          m.payload, m.content_type, m.headers::text AS headers, m.created_at, \
                          m.attempts";
        let claim = |filter: &str| {
            n.render(&format!(
                "SELECT {claim_cols}, {bucket} AS bucket FROM {{messages}} m \
                 WHERE (m.available_at IS NULL OR m.available_at <= $1) {filter} \
                 AND NOT EXISTS (SELECT 1 FROM {{blocked}} k \
                     WHERE k.partition_key = m.partition_key AND k.seq < m.seq) \
                 AND NOT EXISTS (SELECT 1 FROM unnest($4::bigint[]) x(seq) WHERE x.seq = m.seq) \
                 ORDER BY m.seq LIMIT $3"
            ))
        };
        let key_seq_cte = "ks AS (INSERT INTO {key_sequences} (partition_key, last_sequence) \
             SELECT u.k, max(u.n) FROM unnest($6::text[], $7::bigint[], $8::int[]) u(k, n, b) \
             WHERE u.b IN (SELECT bucket FROM fence) GROUP BY u.k \
             ON CONFLICT (partition_key) DO UPDATE \
             SET last_sequence = GREATEST({key_sequences}.last_sequence, excluded.last_sequence), \
                 updated_at = now())";
        let fence_cte = "fence AS (SELECT l.bucket FROM {leases} l \
             JOIN unnest($2::int[], $3::bigint[]) o(bucket, epoch) \
             ON l.bucket = o.bucket AND l.epoch = o.epoch \
             WHERE l.owner = $1 FOR SHARE OF l)";
        Self {
            // $9: commit-order lock class (NULL: no lock), $10: channel.
            insert: insert("", ""),
            insert_notify: insert(notify, notify_ref),
            insert_batch: insert_batch("", ""),
            insert_batch_notify: insert_batch(notify, notify_ref),
            claim_all: claim(""),
            claim_buckets: claim(&format!("AND {bucket} = ANY($5)")),
            // $6..$8: key, sequence number, bucket of each numbered message.
            ack_delete: n.render(&format!(
                "WITH {fence_cte}, {key_seq_cte}, d AS (\
                   DELETE FROM {{messages}} m USING unnest($4::bigint[], $5::int[]) a(seq, bucket) \
                   WHERE m.seq = a.seq AND a.bucket IN (SELECT bucket FROM fence) \
                   RETURNING m.seq) \
                 SELECT ARRAY(SELECT bucket FROM fence), (SELECT count(*) FROM d)"
            )),
            // $9: published_at.
            ack_retain: n.render(&format!(
                "WITH {fence_cte}, {key_seq_cte}, d AS (\
                   DELETE FROM {{messages}} m USING unnest($4::bigint[], $5::int[]) a(seq, bucket) \
                   WHERE m.seq = a.seq AND a.bucket IN (SELECT bucket FROM fence) \
                   RETURNING m.*), \
                 ins AS (INSERT INTO {{published}} ({COLUMNS}, published_at) \
                 SELECT seq, id, topic, partition_key, event_type, schema_version, payload, \
                        content_type, headers, created_at, attempts + 1, $9 FROM d RETURNING seq) \
                 SELECT ARRAY(SELECT bucket FROM fence), (SELECT count(*) FROM ins)"
            )),
            fence: n.render(&format!("WITH {fence_cte} SELECT bucket FROM fence")),
            delete_published: n.render("DELETE FROM {messages} WHERE seq = ANY($1)"),
            move_published: n.render(&format!(
                "WITH d AS (DELETE FROM {{messages}} WHERE seq = ANY($1) RETURNING *) \
                 INSERT INTO {{published}} ({COLUMNS}, published_at) \
                 SELECT seq, id, topic, partition_key, event_type, schema_version, payload, \
                        content_type, headers, created_at, attempts + 1, $2 FROM d"
            )),
            key_seq_upsert: n.render(
                "INSERT INTO {key_sequences} (partition_key, last_sequence) \
                 SELECT u.k, max(u.n) FROM unnest($1::text[], $2::bigint[]) u(k, n) GROUP BY u.k \
                 ON CONFLICT (partition_key) DO UPDATE \
                 SET last_sequence = GREATEST({key_sequences}.last_sequence, \
                                              excluded.last_sequence), \
                     updated_at = now()",
            ),
            key_seq_read: n.render(
                "SELECT partition_key, last_sequence FROM {key_sequences} \
                 WHERE partition_key = ANY($1)",
            ),
            unblock: n.render(
                "DELETE FROM {blocked} b USING unnest($1::text[], $2::bigint[]) u(k, seq) \
                 WHERE b.partition_key = u.k AND b.seq = u.seq",
            ),
            retry: n.render(
                "UPDATE {messages} m SET attempts = u.attempts, available_at = u.at, \
                 last_error = u.err \
                 FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::text[]) \
                      u(seq, attempts, at, err) WHERE m.seq = u.seq",
            ),
            block: n.render(
                "INSERT INTO {blocked} (partition_key, seq) \
                 SELECT * FROM unnest($1::text[], $2::bigint[]) \
                 ON CONFLICT (partition_key) DO UPDATE \
                 SET seq = LEAST({blocked}.seq, excluded.seq)",
            ),
            dead: n.render(&format!(
                "WITH d AS (DELETE FROM {{messages}} m \
                   USING unnest($1::bigint[], $2::int[], $3::text[]) u(seq, attempts, err) \
                   WHERE m.seq = u.seq \
                   RETURNING m.*, u.attempts AS new_attempts, u.err) \
                 INSERT INTO {{dead_letters}} ({COLUMNS}, last_error, dead_at) \
                 SELECT seq, id, topic, partition_key, event_type, schema_version, payload, \
                        content_type, headers, created_at, new_attempts, err, now() FROM d \
                 ON CONFLICT (id) DO UPDATE SET {}",
                super::DEAD_LETTER_UPSERT
            )),
            heartbeat: n.render(
                "WITH up AS (INSERT INTO {relays} (relay_id, expires_at) \
                     VALUES ($1, now() + make_interval(secs => $2)) \
                     ON CONFLICT (relay_id) DO UPDATE SET expires_at = excluded.expires_at \
                     RETURNING 1), \
                 gone AS (DELETE FROM {relays} \
                     WHERE expires_at < now() - make_interval(secs => $2 * 10) RETURNING 1) \
                 SELECT 1 + count(*) FROM {relays} WHERE expires_at > now() AND relay_id <> $1",
            ),
            renew: n.render(
                "UPDATE {leases} l SET expires_at = now() + make_interval(secs => $2) \
                 FROM unnest($3::int[], $4::bigint[]) o(bucket, epoch) \
                 WHERE l.bucket = o.bucket AND l.epoch = o.epoch AND l.owner = $1 \
                 RETURNING l.bucket, l.epoch",
            ),
            acquire: n.render(
                "UPDATE {leases} l SET owner = $1, epoch = l.epoch + 1, \
                     expires_at = now() + make_interval(secs => $2) \
                 WHERE l.expires_at < now() AND l.bucket IN (\
                     SELECT bucket FROM {leases} WHERE expires_at < now() \
                     ORDER BY bucket LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING l.bucket, l.epoch",
            ),
            release: n.render(
                "UPDATE {leases} l SET owner = NULL, expires_at = '-infinity' \
                 FROM unnest($2::int[], $3::bigint[]) o(bucket, epoch) \
                 WHERE l.bucket = o.bucket AND l.epoch = o.epoch AND l.owner = $1",
            ),
            leave: n.render("DELETE FROM {relays} WHERE relay_id = $1"),
            bucket_count: n.render("SELECT count(*)::int FROM {leases}"),
            stats: n.render(
                "SELECT (SELECT count(*) FROM {messages}), \
                        (SELECT extract(epoch FROM now() - min(created_at))::float8 \
                           FROM {messages}), \
                        (SELECT count(*) FROM {dead_letters}), \
                        (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = $1::regclass), \
                        (SELECT extract(epoch FROM now() - min(xact_start))::float8 \
                           FROM pg_stat_activity \
                          WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()), \
                        current_setting('autovacuum') = 'on' AND NOT EXISTS (\
                          SELECT 1 FROM pg_class c, unnest(c.reloptions) o \
                           WHERE c.oid = $1::regclass \
                             AND o IN ('autovacuum_enabled=false', 'autovacuum_enabled=off'))",
            ),
            purge: n.render(
                "DELETE FROM {published} WHERE seq IN (\
                   SELECT seq FROM {published} WHERE published_at < $1 ORDER BY published_at \
                   LIMIT $2)",
            ),
        }
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
        PgOutboxBuilder {
            pool,
            schema: "outbox".to_owned(),
            prefix: String::new(),
            wake_up: WakeUp::default(),
            commit_order_lock: true,
            notify_interval: Duration::from_millis(1),
        }
    }

    /// The pool the relay and the administrative methods use.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub(crate) fn names(&self) -> &TableNames {
        &self.inner.names
    }

    /// Creates or upgrades the crate's schema and tables. Safe to run from
    /// several processes at once (serialized by an advisory lock) and on
    /// every start.
    pub async fn migrate(&self) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.migrate_once().await {
                // Another program created the same schema at the same
                // moment (`CREATE SCHEMA IF NOT EXISTS` is not safe against
                // that); the next attempt finds it.
                Err(Error::Database(sqlx::Error::Database(e)))
                    if attempt < 5 && matches!(e.code().as_deref(), Some("23505" | "42P06")) =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    async fn migrate_once(&self) -> Result<()> {
        let n = &self.inner.names;
        let mut tx = self.inner.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
            .bind(fnv1a32(n.migrations.as_bytes()))
            .execute(&mut *tx)
            .await?;
        let schema = n.schema.as_deref().unwrap_or("public");
        tx.execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
            .await?;
        tx.execute(
            n.render(
                "CREATE TABLE IF NOT EXISTS {migrations} (version bigint PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .as_str(),
        )
        .await?;
        let current: Option<i64> =
            sqlx::query_scalar(&n.render("SELECT max(version) FROM {migrations}"))
                .fetch_one(&mut *tx)
                .await?;
        let current = current.unwrap_or(0);
        check_schema_version(Some(current), MIGRATIONS)?;
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            // Several statements: `execute` on a string without arguments
            // uses the simple query protocol (and, unlike `raw_sql`, keeps
            // the future `Send` inside `tokio::spawn`).
            tx.execute(n.render(sql).as_str()).await?;
            sqlx::query(&n.render("INSERT INTO {migrations} (version) VALUES ($1)"))
                .bind(version)
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
        E: Executor<'c, Database = Postgres>,
    {
        message.validate()?;
        let id = message.id;
        let headers = message.headers_json();
        let carry = self.carries_wake_up();
        let sql = if carry {
            &self.inner.sql.insert_notify
        } else {
            &self.inner.sql.insert
        };
        let mut q = sqlx::query(sql)
            .bind(id.as_uuid())
            .bind(message.topic)
            .bind(message.partition_key)
            .bind(message.event_type)
            .bind(message.schema_version)
            .bind(message.payload)
            .bind(message.content_type)
            .bind(headers)
            .bind(self.inner.lock_class);
        if carry {
            q = q.bind(&self.inner.channel);
        }
        // The row count tells an insert from a duplicate: no row to send
        // back and decode on the hot path.
        let inserted = q.execute(executor).await?.rows_affected();
        Ok(if inserted == 1 {
            Enqueued::Inserted(id)
        } else {
            Enqueued::Duplicate(id)
        })
    }

    /// Writes many messages in one statement, in the given order (so
    /// messages of one key keep their order).
    pub async fn enqueue_batch<'c, E>(
        &self,
        executor: E,
        messages: impl IntoIterator<Item = NewMessage>,
    ) -> Result<BatchEnqueued>
    where
        E: Executor<'c, Database = Postgres>,
    {
        let messages: Vec<NewMessage> = messages.into_iter().collect();
        if messages.is_empty() {
            return Ok(BatchEnqueued::default());
        }
        let len = messages.len();
        let (mut ids, mut topics, mut keys, mut types) = (
            Vec::with_capacity(len),
            Vec::with_capacity(len),
            Vec::with_capacity(len),
            Vec::with_capacity(len),
        );
        let (mut versions, mut payloads, mut cts, mut headers) = (
            Vec::with_capacity(len),
            Vec::with_capacity(len),
            Vec::with_capacity(len),
            Vec::with_capacity(len),
        );
        for m in &messages {
            m.validate()?;
        }
        let order: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        for m in messages {
            headers.push(m.headers_json());
            ids.push(m.id.as_uuid());
            topics.push(m.topic);
            keys.push(m.partition_key);
            types.push(m.event_type);
            versions.push(m.schema_version);
            payloads.push(m.payload);
            cts.push(m.content_type);
        }
        let carry = self.carries_wake_up();
        let sql = if carry {
            &self.inner.sql.insert_batch_notify
        } else {
            &self.inner.sql.insert_batch
        };
        let mut q = sqlx::query_scalar(sql)
            .bind(ids)
            .bind(topics)
            .bind(keys)
            .bind(types)
            .bind(versions)
            .bind(payloads)
            .bind(cts)
            .bind(headers)
            .bind(self.inner.lock_class);
        if carry {
            q = q.bind(&self.inner.channel);
        }
        let inserted: Vec<Uuid> = q.fetch_all(executor).await?;
        Ok(split_inserted(order, inserted))
    }

    /// Enqueues a typed event: one line for the common case.
    pub async fn publish_event<'c, E, V>(&self, executor: E, event: &V) -> Result<Enqueued>
    where
        E: Executor<'c, Database = Postgres>,
        V: Event + ?Sized,
    {
        self.enqueue(executor, NewMessage::from_event(event)?).await
    }

    /// Commits the caller's transaction, then wakes the relays (see
    /// [`WakeUp`]). Equivalent to `tx.commit()` plus a prompt wake-up.
    pub async fn commit(&self, tx: Transaction<'_, Postgres>) -> Result<()> {
        tx.commit().await?;
        self.wake();
        Ok(())
    }

    fn micros(&self) -> u64 {
        // Never 0, which stands for "never".
        self.inner.epoch.elapsed().as_micros() as u64 + 1
    }

    /// Whether this enqueue carries the wake-up: always with
    /// [`WakeUp::InTransaction`]; with [`WakeUp::AfterCommit`], the first
    /// enqueue after `notify_interval` without one. Its `pg_notify` is sent
    /// when the caller's transaction commits: no transaction of its own,
    /// and, under load, one in every so many transactions pays for it.
    fn carries_wake_up(&self) -> bool {
        match self.inner.wake_up {
            WakeUp::InTransaction => true,
            WakeUp::LocalOnly => false,
            WakeUp::AfterCommit => {
                let now = self.micros();
                let last = self.inner.carried_at.load(Ordering::Acquire);
                let interval = self.inner.notify_interval.as_micros() as u64;
                if interval == 0 {
                    self.inner.carried_at.fetch_max(now, Ordering::AcqRel);
                    return true;
                }
                (last == 0 || now.saturating_sub(last) >= interval)
                    && self
                        .inner
                        .carried_at
                        .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
            }
        }
    }

    /// Wakes relays now, as after a commit.
    pub fn wake(&self) {
        self.inner.signal.notify_waiters();
        self.inner.signal.notify_one();
        if self.inner.wake_up == WakeUp::AfterCommit {
            self.inner
                .committed_at
                .fetch_max(self.micros(), Ordering::AcqRel);
            self.spawn_notifier();
            self.inner.remote.notify_one();
        }
    }

    fn spawn_notifier(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.inner.notifier.get_or_init(|| {
            let pool = self.inner.pool.clone();
            let remote = self.inner.remote.clone();
            let interval = self.inner.notify_interval;
            // A NOTIFY of its own is one prepared statement in an implicit
            // transaction. A transaction that only notifies writes no WAL of
            // its own, so its commit never waits for a flush (measured: one
            // WAL sync per thousand of them); an explicit BEGIN/SET/COMMIT
            // around it cost four commands and about four times the server
            // time.
            let channel = self.inner.channel.clone();
            // The task holds the outbox weakly and ends soon after the last
            // clone of it is dropped.
            let alive = Arc::downgrade(&self.inner);
            // A commit is covered by any `pg_notify` carried by an enqueue
            // made after it returned (that transaction commits later still,
            // and its notification goes out then). Under load the next
            // enqueue comes within `notify_interval` and carries one; this
            // task sends a NOTIFY of its own only for commits that no such
            // enqueue followed within twice the interval (at least 1 ms):
            // the end of a burst, or commits of transactions that enqueued
            // through another outbox.
            let grace = (interval * 2).max(Duration::from_millis(1));
            handle.spawn(async move {
                let mut conn: Option<PgConnection> = None;
                loop {
                    if alive.strong_count() == 0 || pool.is_closed() {
                        return;
                    }
                    if tokio::time::timeout(Duration::from_secs(1), remote.notified())
                        .await
                        .is_err()
                    {
                        continue;
                    }
                    let Some(inner) = alive.upgrade() else { return };
                    let committed = inner.committed_at.load(Ordering::Acquire);
                    let due = inner.epoch + Duration::from_micros(committed) + grace;
                    drop(inner);
                    tokio::time::sleep_until(due.into()).await;
                    let Some(inner) = alive.upgrade() else { return };
                    if inner.carried_at.load(Ordering::Acquire) > committed {
                        continue;
                    }
                    let started = inner.epoch.elapsed().as_micros() as u64 + 1;
                    drop(inner);
                    let mut delivered = false;
                    // On a connection of its own, outside the pool: no pool
                    // checkout and liveness ping per NOTIFY, and no pool slot
                    // taken from the application. A connection found broken
                    // is replaced and the NOTIFY sent again, once.
                    for _ in 0..2 {
                        if conn.is_none() {
                            match PgConnection::connect_with(&pool.connect_options()).await {
                                Ok(c) => conn = Some(c),
                                Err(e) => {
                                    tracing::debug!(
                                        error = %e,
                                        "outbox NOTIFY connection failed; relays will poll"
                                    );
                                    break;
                                }
                            }
                        }
                        let Some(c) = conn.as_mut() else { break };
                        let sent = sqlx::query("SELECT pg_notify($1, '')")
                            .bind(&channel)
                            .execute(&mut *c)
                            .await;
                        match sent {
                            Ok(_) => {
                                delivered = true;
                                break;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "outbox NOTIFY failed");
                                conn = None;
                            }
                        }
                    }
                    if delivered {
                        // Counts as carried from its start: enqueues within
                        // the next interval need not carry one.
                        if let Some(inner) = alive.upgrade() {
                            inner.carried_at.fetch_max(started, Ordering::AcqRel);
                        }
                    } else {
                        // Not sent: try again shortly, for the same commits.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        remote.notify_one();
                    }
                }
            });
        });
    }

    /// The relay's claims read the messages table in position order through
    /// its primary key, and must keep doing so when the table's statistics
    /// mislead the planner: after a large backlog drains, the table keeps
    /// its size with a few live rows, and the planner then prefers a
    /// sequential scan and a sort (measured: 20-40 ms per claim on a
    /// 250 MB table, against 0.3 ms through the index), or a parallel plan.
    /// So claims run on connections of their own (the pool's connect
    /// options, at most four, closed after a minute idle) with sequential
    /// scans and parallel workers turned off.
    fn claim_pool(&self) -> &PgPool {
        self.inner.claim_pool.get_or_init(|| {
            let options = self.inner.pool.connect_options().as_ref().clone().options([
                ("enable_seqscan", "off"),
                ("max_parallel_workers_per_gather", "0"),
            ]);
            // No liveness ping before each claim: a broken connection fails
            // its claim, the relay backs off and the pool replaces it.
            PgPoolOptions::new()
                .max_connections(4)
                .min_connections(0)
                .test_before_acquire(false)
                .idle_timeout(Duration::from_secs(60))
                .connect_lazy_with(options)
        })
    }

    /// Dead letters, oldest first.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(&self.inner.names.render(&format!(
            "SELECT {COLUMNS}, last_error, dead_at, headers::text AS headers_text \
             FROM {{dead_letters}} ORDER BY seq LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    message: message_from_row(r, DEAD_HEADERS)?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    dead_at: r.try_get("dead_at")?,
                })
            })
            .collect()
    }

    /// Sends a dead letter again: it returns to the outbox at its original
    /// position with its attempts reset, ahead of any later message of its
    /// key. Writes in its own transaction.
    pub async fn replay_dead_letter(&self, id: MessageId) -> Result<()> {
        let n = self.replay_where("id = $1", Some(id)).await?;
        if n == 0 {
            return Err(Error::DeadLetterNotFound(id));
        }
        Ok(())
    }

    /// Sends every dead letter again; returns how many. Writes in its own
    /// transaction.
    pub async fn replay_all_dead_letters(&self) -> Result<u64> {
        self.replay_where("true", None).await
    }

    async fn replay_where(&self, filter: &str, id: Option<MessageId>) -> Result<u64> {
        let sql = self.inner.names.render(&format!(
            "WITH d AS (DELETE FROM {{dead_letters}} WHERE {filter} RETURNING *), \
             u AS (DELETE FROM {{blocked}} b USING d \
                   WHERE b.partition_key = d.partition_key AND b.seq = d.seq) \
             INSERT INTO {{messages}} ({COLUMNS}) \
             SELECT seq, id, topic, partition_key, event_type, schema_version, payload, \
                    content_type, headers, created_at, 0 FROM d"
        ));
        let mut q = sqlx::query(&sql);
        if let Some(id) = id {
            q = q.bind(id.as_uuid());
        }
        let done = q.execute(&self.inner.pool).await?;
        if done.rows_affected() > 0 {
            self.wake();
        }
        Ok(done.rows_affected())
    }

    /// Deletes a dead letter for good and unblocks its key. Writes in its
    /// own transaction.
    pub async fn discard_dead_letter(&self, id: MessageId) -> Result<()> {
        let sql = self.inner.names.render(
            "WITH d AS (DELETE FROM {dead_letters} WHERE id = $1 RETURNING partition_key, seq), \
             u AS (DELETE FROM {blocked} b USING d \
                   WHERE b.partition_key = d.partition_key AND b.seq = d.seq) \
             SELECT count(*) FROM d",
        );
        let n: i64 = sqlx::query_scalar(&sql)
            .bind(id.as_uuid())
            .fetch_one(&self.inner.pool)
            .await?;
        if n == 0 {
            return Err(Error::DeadLetterNotFound(id));
        }
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
            "SELECT {COLUMNS}, headers::text AS headers_text FROM {{published}} \
             ORDER BY seq LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter()
            .map(|r| message_from_row(r, PUBLISHED_HEADERS))
            .collect()
    }
}

/// Decodes a row that starts with [`COLUMNS`] in their order (by index: a
/// claim decodes a thousand rows, and name lookups were a visible share of
/// it), with the headers as text in column `headers_col`.
fn message_from_row(r: &PgRow, headers_col: usize) -> Result<OutboxMessage> {
    let headers: Option<&str> = r.try_get(headers_col)?;
    let attempts: i32 = r.try_get(10)?;
    Ok(OutboxMessage {
        seq: r.try_get(0)?,
        id: MessageId::from_uuid(r.try_get(1)?),
        topic: r.try_get(2)?,
        partition_key: r.try_get(3)?,
        event_type: r.try_get(4)?,
        schema_version: r.try_get(5)?,
        payload: r.try_get(6)?,
        content_type: r.try_get(7)?,
        headers: OutboxMessage::headers_from_json(headers),
        created_at: r.try_get(9)?,
        attempt: attempts + 1,
        key_sequence: None,
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn lease_arrays(leases: &[Lease]) -> (Vec<i32>, Vec<i64>) {
    leases.iter().map(|l| (l.bucket, l.epoch)).unzip()
}

fn leases_from_rows(rows: Vec<PgRow>) -> Result<Vec<Lease>> {
    rows.iter()
        .map(|r| {
            Ok(Lease {
                bucket: r.try_get(0)?,
                epoch: r.try_get(1)?,
            })
        })
        .collect()
}

struct PgWake {
    listener: PgListener,
}

#[async_trait]
impl WakeSource for PgWake {
    async fn next(&mut self) -> Result<()> {
        // `Ok(None)`: the connection was lost (and is re-established on the
        // next call); notifications sent meanwhile are gone, so the relay
        // must look now rather than wait for one.
        self.listener.try_recv().await?;
        Ok(())
    }
}

impl Store for PgOutbox {}

#[async_trait]
impl StoreOps for PgOutbox {
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
        let n: i64 = sqlx::query_scalar(&self.inner.sql.heartbeat)
            .bind(relay)
            .bind(secs(ttl))
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(n.max(1) as usize)
    }

    async fn renew(&self, p: Renew<'_>) -> Result<Vec<Lease>> {
        let Renew { relay, leases, ttl } = p;
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let (b, e) = lease_arrays(leases);
        let rows = sqlx::query(&self.inner.sql.renew)
            .bind(relay)
            .bind(secs(ttl))
            .bind(b)
            .bind(e)
            .fetch_all(&self.inner.pool)
            .await?;
        leases_from_rows(rows)
    }

    async fn acquire(&self, p: Acquire) -> Result<Vec<Lease>> {
        let Acquire { relay, max, ttl } = p;
        if max == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&self.inner.sql.acquire)
            .bind(relay)
            .bind(secs(ttl))
            .bind(max as i64)
            .fetch_all(&self.inner.pool)
            .await?;
        leases_from_rows(rows)
    }

    async fn release(&self, p: Release<'_>) -> Result<()> {
        let Release { relay, leases } = p;
        if leases.is_empty() {
            return Ok(());
        }
        let (b, e) = lease_arrays(leases);
        sqlx::query(&self.inner.sql.release)
            .bind(relay)
            .bind(b)
            .bind(e)
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    async fn leave(&self, relay: Uuid) -> Result<()> {
        sqlx::query(&self.inner.sql.leave)
            .bind(relay)
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    async fn claim(&self, p: Claim<'_>) -> Result<Vec<Claimed>> {
        let Claim {
            buckets,
            bucket_count,
            now,
            limit,
            exclude,
        } = p;
        let q = match buckets {
            None => sqlx::query(&self.inner.sql.claim_all)
                .bind(now)
                .bind(bucket_count)
                .bind(limit)
                .bind(exclude),
            Some(b) => sqlx::query(&self.inner.sql.claim_buckets)
                .bind(now)
                .bind(bucket_count)
                .bind(limit)
                .bind(exclude)
                .bind(b),
        };
        if self.inner.pool.is_closed() {
            // The application closed its pool: close ours with it.
            if let Some(p) = self.inner.claim_pool.get() {
                p.close().await;
            }
            return Err(sqlx::Error::PoolClosed.into());
        }
        let rows = q.fetch_all(self.claim_pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    message: message_from_row(r, 8)?,
                    bucket: r.try_get(11)?,
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
        let (lb, le) = lease_arrays(leases);
        let simple = acks
            .iter()
            .all(|a| matches!(a.disposition, Disposition::Published) && !a.retried);
        if simple {
            // The common case in one statement: fence and delete (or move)
            // atomically.
            let (seqs, buckets): (Vec<i64>, Vec<i32>) =
                acks.iter().map(|a| (a.seq, a.bucket)).unzip();
            let sql = if retain {
                &self.inner.sql.ack_retain
            } else {
                &self.inner.sql.ack_delete
            };
            let (mut ks_k, mut ks_n, mut ks_b) = (Vec::new(), Vec::new(), Vec::new());
            for a in acks {
                if let (Some(k), Some(n)) = (&a.partition_key, a.key_sequence) {
                    ks_k.push(k.as_str());
                    ks_n.push(n);
                    ks_b.push(a.bucket);
                }
            }
            let mut q = sqlx::query_as::<_, (Vec<i32>, i64)>(sql)
                .bind(relay)
                .bind(lb)
                .bind(le)
                .bind(seqs)
                .bind(buckets)
                .bind(ks_k)
                .bind(ks_n)
                .bind(ks_b);
            if retain {
                q = q.bind(now);
            }
            let (valid, _written) = q.fetch_one(&self.inner.pool).await?;
            // Rows already gone (an operator deleted them) are not fencing.
            let valid: HashSet<i32> = valid.into_iter().collect();
            let mut report = AckReport::default();
            for a in acks {
                if valid.contains(&a.bucket) {
                    report.applied += 1;
                } else {
                    report.fenced += 1;
                    if !report.fenced_buckets.contains(&a.bucket) {
                        report.fenced_buckets.push(a.bucket);
                    }
                }
            }
            return Ok(report);
        }

        let mut tx = self.inner.pool.begin().await?;
        let valid: Vec<i32> = sqlx::query_scalar(&self.inner.sql.fence)
            .bind(relay)
            .bind(lb)
            .bind(le)
            .fetch_all(&mut *tx)
            .await?;
        let valid: HashSet<i32> = valid.into_iter().collect();
        let plan = AckPlan::new(acks, |b| valid.contains(&b));
        let published = &plan.published;
        let (ks_k, ks_n): (Vec<&str>, Vec<i64>) = plan.key_sequences.iter().copied().unzip();
        let (unblock_k, unblock_s): (Vec<&str>, Vec<i64>) = plan.unblock.iter().copied().unzip();
        let (block_k, block_s): (Vec<&str>, Vec<i64>) = plan.block.iter().copied().unzip();
        let r_seq: Vec<i64> = plan.retry.iter().map(|r| r.0).collect();
        let r_att: Vec<i32> = plan.retry.iter().map(|r| r.1).collect();
        let r_at: Vec<DateTime<Utc>> = plan.retry.iter().map(|r| r.2).collect();
        let r_err: Vec<&str> = plan.retry.iter().map(|r| r.3).collect();
        let d_seq: Vec<i64> = plan.dead.iter().map(|d| d.0).collect();
        let d_att: Vec<i32> = plan.dead.iter().map(|d| d.1).collect();
        let d_err: Vec<&str> = plan.dead.iter().map(|d| d.2).collect();
        if !published.is_empty() {
            if retain {
                sqlx::query(&self.inner.sql.move_published)
                    .bind(published)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(&self.inner.sql.delete_published)
                    .bind(published)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if !ks_k.is_empty() {
            sqlx::query(&self.inner.sql.key_seq_upsert)
                .bind(ks_k)
                .bind(ks_n)
                .execute(&mut *tx)
                .await?;
        }
        if !unblock_k.is_empty() {
            sqlx::query(&self.inner.sql.unblock)
                .bind(unblock_k)
                .bind(unblock_s)
                .execute(&mut *tx)
                .await?;
        }
        if !r_seq.is_empty() {
            sqlx::query(&self.inner.sql.retry)
                .bind(r_seq)
                .bind(r_att)
                .bind(r_at)
                .bind(r_err)
                .execute(&mut *tx)
                .await?;
        }
        if !d_seq.is_empty() {
            sqlx::query(&self.inner.sql.dead)
                .bind(d_seq)
                .bind(d_att)
                .bind(d_err)
                .execute(&mut *tx)
                .await?;
        }
        if !block_k.is_empty() {
            sqlx::query(&self.inner.sql.block)
                .bind(block_k)
                .bind(block_s)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(plan.report)
    }

    async fn key_sequences(&self, keys: &[String]) -> Result<HashMap<String, i64>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(&self.inner.sql.key_seq_read)
            .bind(keys)
            .fetch_all(&self.inner.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    async fn purge_published(&self, p: Purge) -> Result<u64> {
        let Purge { before, limit } = p;
        Ok(sqlx::query(&self.inner.sql.purge)
            .bind(before)
            .bind(limit)
            .execute(&self.inner.pool)
            .await?
            .rows_affected())
    }

    async fn stats(&self) -> Result<StoreStats> {
        let messages = self.inner.names.messages.clone();
        let row = sqlx::query(&self.inner.sql.stats)
            .bind(messages)
            .fetch_one(&self.inner.pool)
            .await?;
        let age: Option<f64> = row.try_get(1)?;
        let xmin_age: Option<f64> = row.try_get(4)?;
        Ok(StoreStats {
            pending: row.try_get(0)?,
            oldest_pending_age: age.map(|s| Duration::from_secs_f64(s.max(0.0))),
            dead_letters: row.try_get(2)?,
            dead_tuples: row.try_get(3)?,
            oldest_xmin_age: xmin_age.map(|s| Duration::from_secs_f64(s.max(0.0))),
            autovacuum: row.try_get(5)?,
        })
    }

    async fn vacuum(&self) -> Result<()> {
        // Not in a transaction (VACUUM refuses one); SKIP_LOCKED so it never
        // waits behind a lock.
        let sql = format!("VACUUM (SKIP_LOCKED) {}", self.inner.names.messages);
        self.inner.pool.execute(sql.as_str()).await?;
        Ok(())
    }

    fn local_signal(&self) -> Arc<Notify> {
        self.inner.signal.clone()
    }

    async fn listen(&self) -> Result<Option<Box<dyn WakeSource>>> {
        if self.inner.wake_up == WakeUp::LocalOnly {
            return Ok(None);
        }
        let mut listener = PgListener::connect_with(&self.inner.pool).await?;
        listener.listen(&self.inner.channel).await?;
        Ok(Some(Box::new(PgWake { listener })))
    }
}
