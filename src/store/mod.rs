//! Storage backends: one concrete type per database.
//!
//! [`PgOutbox`](crate::PgOutbox), [`SqliteOutbox`](crate::SqliteOutbox) and
//! `MySqlOutbox` share no generic code a user has to see; the relay talks to them through
//! the sealed [`Store`] trait.

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) mod admin;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) mod begin;
pub(crate) mod dead_letters;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) mod deadlock;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) mod decode;
#[cfg(test)]
pub(crate) mod memory;
#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(test)]
pub(crate) mod shorthand;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) mod statements;
#[cfg(any(feature = "sqlite", feature = "mysql"))]
mod store_ops;
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) use self::store_ops::store_ops;

use std::collections::HashMap;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
use crate::message::BatchEnqueued;
use crate::message::{MessageId, OutboxMessage};

/// Longest identifier PostgreSQL keeps without truncating.
const MAX_IDENT_LEN: usize = 63;
/// Longest table suffix the crate appends to the prefix.
const LONGEST_TABLE: &str = "dead_letters";

/// Validates a schema name or table prefix. Only lowercase ASCII letters,
/// digits and underscores, not starting with a digit, so the quoted name
/// means the same thing as the unquoted one and cannot carry SQL.
pub(crate) fn validate_identifier(
    what: &'static str,
    value: &str,
    allow_empty: bool,
) -> Result<()> {
    let fail = |reason| {
        Err(Error::InvalidIdentifier {
            what,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            fail("must not be empty")
        };
    }
    let limit = if what == "table prefix" {
        MAX_IDENT_LEN - LONGEST_TABLE.len()
    } else {
        MAX_IDENT_LEN
    };
    if value.len() > limit {
        return fail("is too long for a PostgreSQL identifier");
    }
    if value.as_bytes()[0].is_ascii_digit() {
        return fail("must not start with a digit");
    }
    if what == "schema" && value.starts_with("pg_") {
        // PostgreSQL reserves these for system schemas and refuses to
        // create one: better said here than as an opaque error at
        // `migrate()`.
        return fail("must not start with 'pg_' (reserved for system schemas)");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return fail("may hold only lowercase ASCII letters, digits and '_'");
    }
    Ok(())
}

/// Validates a schema (if any) and table prefix, and returns what makes a
/// table's quoted, qualified name from its suffix, quoting with `quote`:
/// `"` in standard SQL, a backtick on MySQL (whose double quotes delimit
/// strings unless the server runs with `ANSI_QUOTES`).
pub(crate) fn quoted_qualifier(
    schema: Option<&str>,
    prefix: &str,
    quote: char,
) -> Result<impl Fn(&str) -> String> {
    if let Some(s) = schema {
        validate_identifier("schema", s, false)?;
    }
    validate_identifier("table prefix", prefix, true)?;
    let (schema, prefix) = (schema.map(str::to_owned), prefix.to_owned());
    let q = quote;
    Ok(move |table: &str| match &schema {
        Some(s) => format!("{q}{s}{q}.{q}{prefix}{table}{q}"),
        None => format!("{q}{prefix}{table}{q}"),
    })
}

/// The largest payload limit a builder accepts: PostgreSQL's `bytea`
/// holds at most 1 GB.
pub(crate) const MAX_PAYLOAD_LIMIT: usize = 1 << 30;

/// Validates a builder's `max_payload_bytes`.
pub(crate) fn validate_max_payload(limit: usize) -> Result<usize> {
    if limit == 0 || limit > MAX_PAYLOAD_LIMIT {
        return Err(Error::InvalidConfig {
            field: "max_payload_bytes",
            reason: format!("must be between 1 and {MAX_PAYLOAD_LIMIT}, not {limit}"),
        });
    }
    Ok(limit)
}

/// Refuses a schema at a newer migration version than `migrations` knows:
/// running against it could corrupt data.
pub(crate) fn check_schema_version(found: Option<i64>, migrations: &[(i64, &str)]) -> Result<()> {
    let supported = migrations.last().map_or(0, |m| m.0);
    match found {
        Some(v) if v > supported => Err(Error::SchemaTooNew {
            found: v,
            supported,
        }),
        _ => Ok(()),
    }
}

/// Refuses tables that are not at the version this build needs: newer ones
/// could be corrupted, older ones lack what its statements use.
pub(crate) fn check_schema_current(found: Option<i64>, migrations: &[(i64, &str)]) -> Result<()> {
    check_schema_version(found, migrations)?;
    let required = migrations.last().map_or(0, |m| m.0);
    let found = found.unwrap_or(0);
    if found < required {
        return Err(Error::SchemaTooOld { found, required });
    }
    Ok(())
}

/// One set of embedded migrations (an outbox's, or an inbox's) and the
/// table that records which of them are applied: what each backend's
/// migration runner applies.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) struct MigrationSet<'a> {
    /// `(version, statements)`, in version order.
    pub(crate) migrations: &'static [(i64, &'static str)],
    /// The quoted name of the table of applied versions.
    pub(crate) table: &'a str,
    /// The schema the tables live in, if the backend has schemas.
    pub(crate) schema: Option<&'a str>,
    /// Fills the table-name placeholders of a migration.
    pub(crate) names: &'a dyn RenderNames,
}

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
impl<'a> MigrationSet<'a> {
    /// The set of `migrations` recorded in `table`, its placeholders
    /// filled from `names`.
    pub(crate) fn new(
        migrations: &'static [(i64, &'static str)],
        table: &'a str,
        schema: Option<&'a str>,
        names: &'a dyn RenderNames,
    ) -> Self {
        MigrationSet {
            migrations,
            table,
            schema,
            names,
        }
    }

    /// Applies the migrations after the version `version` reads, each
    /// recorded by `record`, on `conn` (in the caller's transaction where
    /// the backend has transactional DDL). `persistent`: whether the
    /// bookkeeping statements may be prepared and cached.
    pub(crate) async fn apply_pending<DB>(
        &self,
        conn: &mut DB::Connection,
        version: &str,
        record: &str,
        persistent: bool,
    ) -> Result<()>
    where
        DB: sqlx::Database + sqlx::database::HasStatementCache,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
    {
        use sqlx::Executor as _;
        let current: Option<i64> = sqlx::query_scalar(&self.bookkeeping(version))
            .persistent(persistent)
            .fetch_one(&mut *conn)
            .await?;
        let current = current.unwrap_or(0);
        self.check_not_newer(current)?;
        let record = self.bookkeeping(record);
        for (version, migration) in self.pending(current) {
            // Several statements: `execute` on a string without arguments
            // sends them as one simple (text) query, and, unlike
            // `raw_sql`, keeps the future `Send` inside `tokio::spawn`.
            (&mut *conn).execute(migration.as_str()).await?;
            sqlx::query(&record)
                .persistent(persistent)
                .bind(version)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Refuses tables at another version than this build needs, from the
    /// read of the applied version; a read that fails because the table
    /// does not exist (as `missing` tells) means never migrated.
    #[cfg(any(feature = "sqlite", feature = "mysql"))]
    pub(crate) fn check_current(
        &self,
        read: std::result::Result<Option<i64>, sqlx::Error>,
        missing: impl Fn(&dyn sqlx::error::DatabaseError) -> bool,
    ) -> Result<()> {
        let found = match read {
            Ok(v) => v,
            Err(sqlx::Error::Database(e)) if missing(e.as_ref()) => None,
            Err(e) => return Err(e.into()),
        };
        check_schema_current(found, self.migrations)
    }

    /// A bookkeeping statement of the runner, its `{migrations}` and
    /// `{schema}` filled from this set.
    pub(crate) fn bookkeeping(&self, file: &str) -> String {
        statements::body(file)
            .replace("{migrations}", self.table)
            .replace("{schema}", self.schema.unwrap_or(""))
    }

    /// Refuses an applied version newer than this build knows.
    pub(crate) fn check_not_newer(&self, found: i64) -> Result<()> {
        check_schema_version(Some(found), self.migrations)
    }

    /// The migrations after `current`, rendered.
    pub(crate) fn pending(&self, current: i64) -> impl Iterator<Item = (i64, String)> + '_ {
        self.migrations
            .iter()
            .filter(move |m| m.0 > current)
            .map(|(v, sql)| (*v, self.names.render(sql)))
    }
}

/// Validated table names that fill a statement's placeholders.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) trait RenderNames: Sync {
    /// Replaces `{messages}`-style placeholders in a migration or query.
    fn render(&self, sql: &str) -> String;
}

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
impl RenderNames for TableNames {
    fn render(&self, sql: &str) -> String {
        TableNames::render(self, sql)
    }
}

/// The quoted names of the crate's tables, built once from validated parts.
#[derive(Debug, Clone)]
pub(crate) struct TableNames {
    pub(crate) schema: Option<String>,
    pub(crate) prefix: String,
    pub(crate) messages: String,
    pub(crate) dead_letters: String,
    pub(crate) published: String,
    pub(crate) blocked: String,
    pub(crate) ready_floor: String,
    pub(crate) leases: String,
    pub(crate) relays: String,
    pub(crate) key_sequences: String,
    pub(crate) key_sequence_log: String,
    pub(crate) key_slots: String,
    pub(crate) sequencer: String,
    pub(crate) changes: String,
    pub(crate) export_cursors: String,
    pub(crate) migrations: String,
}

impl TableNames {
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn new(schema: Option<&str>, prefix: &str) -> Result<Self> {
        Self::quoted(schema, prefix, '"')
    }

    /// The names quoted with `quote` (see [`quoted_qualifier`]).
    pub(crate) fn quoted(schema: Option<&str>, prefix: &str, quote: char) -> Result<Self> {
        let q = quoted_qualifier(schema, prefix, quote)?;
        Ok(Self {
            schema: schema.map(str::to_owned),
            prefix: prefix.to_owned(),
            messages: q("messages"),
            dead_letters: q("dead_letters"),
            published: q("published"),
            blocked: q("blocked_keys"),
            ready_floor: q("ready_floor"),
            leases: q("leases"),
            relays: q("relays"),
            key_sequences: q("key_sequences"),
            key_sequence_log: q("key_sequence_log"),
            key_slots: q("key_slots"),
            sequencer: q("sequencer"),
            changes: q("changes"),
            export_cursors: q("export_cursors"),
            migrations: q("migrations"),
        })
    }

    /// Replaces `{messages}`-style placeholders in a migration or query.
    pub(crate) fn render(&self, sql: &str) -> String {
        sql.replace("{schema}", self.schema.as_deref().unwrap_or(""))
            .replace("{prefix}", &self.prefix)
            .replace("{messages}", &self.messages)
            .replace("{dead_letters}", &self.dead_letters)
            .replace("{published}", &self.published)
            .replace("{blocked}", &self.blocked)
            .replace("{ready_floor}", &self.ready_floor)
            .replace("{leases}", &self.leases)
            .replace("{relays}", &self.relays)
            .replace("{key_sequences}", &self.key_sequences)
            .replace("{key_sequence_log}", &self.key_sequence_log)
            .replace("{key_slots}", &self.key_slots)
            .replace("{sequencer}", &self.sequencer)
            .replace("{changes}", &self.changes)
            .replace("{export_cursors}", &self.export_cursors)
            .replace("{migrations}", &self.migrations)
    }
}

/// Splits a batch's ids, in the order given, into those the database
/// reports as inserted and the rest (already present, or repeated within the
/// batch: only the first occurrence of an id can be inserted).
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) fn split_inserted(order: Vec<MessageId>, inserted: Vec<Uuid>) -> BatchEnqueued {
    let mut fresh: HashSet<Uuid> = inserted.into_iter().collect();
    let mut out = BatchEnqueued::default();
    for id in order {
        if fresh.remove(&id.as_uuid()) {
            out.inserted.push(id);
        } else {
            out.duplicates.push(id);
        }
    }
    out
}

/// A lease on one virtual partition (bucket) of the key space. The epoch is
/// the fencing token: it grows each time the bucket changes hands, and every
/// acknowledgement is checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct Lease {
    pub(crate) bucket: i32,
    pub(crate) epoch: i64,
}

/// A claimed message and the bucket it belongs to.
#[derive(Debug, Clone)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct Claimed {
    pub(crate) message: OutboxMessage,
    pub(crate) bucket: i32,
    /// Why the stored row could not be read whole, if it could not: the
    /// relay dead-letters it with this error instead of publishing it (or
    /// failing every claim on it).
    pub(crate) undecodable: Option<String>,
}

/// What one claim read: the messages, and whether it stopped before it ran
/// out of due messages (at its limit or its byte budget), so that more may
/// be waiting. Reads as the list of messages.
#[derive(Debug, Clone, Default)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct ClaimedBatch {
    pub(crate) messages: Vec<Claimed>,
    pub(crate) more: bool,
}

impl ClaimedBatch {
    /// `messages`, a prefix of what the claim's scan read, under a claim
    /// of at most `limit`; `cut` if the scan read a row after the last
    /// one kept (the byte budget left it out).
    pub(crate) fn new(messages: Vec<Claimed>, cut: bool, limit: i64) -> Self {
        let more = cut || messages.len() as i64 >= limit;
        Self { messages, more }
    }
}

impl std::ops::Deref for ClaimedBatch {
    type Target = Vec<Claimed>;

    fn deref(&self) -> &Vec<Claimed> {
        &self.messages
    }
}

impl std::ops::DerefMut for ClaimedBatch {
    fn deref_mut(&mut self) -> &mut Vec<Claimed> {
        &mut self.messages
    }
}

/// What the relay decided for one claimed message.
#[derive(Debug, Clone)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub enum Disposition {
    /// The publisher confirmed it.
    Published,
    /// Try again at `at`; if `block_key`, later messages of the key wait.
    Retry {
        at: DateTime<Utc>,
        error: String,
        block_key: bool,
    },
    /// Give up: move to the dead letters; if `block_key`, the key stays
    /// blocked until the dead letter is replayed or discarded, or an
    /// operator lifts the block.
    Dead { error: String, block_key: bool },
}

/// One acknowledgement.
#[derive(Debug, Clone)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct Ack {
    pub(crate) seq: i64,
    pub(crate) bucket: i32,
    pub(crate) partition_key: Option<String>,
    /// Attempts made, this one included.
    pub(crate) attempts: i32,
    /// True if the message had failed before (it may hold a key block).
    pub(crate) retried: bool,
    /// The per-key sequence number it was published with, if numbered.
    pub(crate) key_sequence: Option<i64>,
    pub(crate) disposition: Disposition,
}

#[cfg(test)]
impl Ack {
    /// The acknowledgement of `c` with `disposition`, as the relay writes it.
    pub(crate) fn of(c: &Claimed, disposition: Disposition) -> Ack {
        Ack {
            seq: c.message.seq,
            bucket: c.bucket,
            partition_key: c.message.partition_key.clone(),
            attempts: c.message.attempt,
            retried: c.message.attempt > 1,
            key_sequence: c.message.key_sequence,
            disposition,
        }
    }
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct AckReport {
    /// Acks written.
    pub(crate) applied: usize,
    /// Acks refused because the bucket's lease changed hands (fencing).
    pub(crate) fenced: usize,
    /// The buckets whose acks were refused.
    pub(crate) fenced_buckets: Vec<i32>,
}

/// Acknowledgements sorted into what each backend writes, after fencing.
#[derive(Debug, Default)]
pub(crate) struct AckPlan<'a> {
    pub(crate) report: AckReport,
    /// Positions to delete (or move to the published table).
    pub(crate) published: Vec<i64>,
    /// (key, number) of each published numbered message, and of each one
    /// that failed under the unordered policy (its number is spent).
    pub(crate) key_sequences: Vec<(&'a str, i64)>,
    /// (key, position) of heads whose block is lifted.
    pub(crate) unblock: Vec<(&'a str, i64)>,
    /// (key, position) of heads that now block their key.
    pub(crate) block: Vec<(&'a str, i64)>,
    /// (position, attempts, due, error) of messages to retry.
    pub(crate) retry: Vec<(i64, i32, DateTime<Utc>, &'a str)>,
    /// (position, attempts, error) of messages to dead-letter.
    pub(crate) dead: Vec<(i64, i32, &'a str)>,
}

impl<'a> AckPlan<'a> {
    /// Records the number of a failed message that does not hold its key
    /// back (the unordered policy) as spent: the key's later messages go on
    /// past it, and one of them may have been sent already under the next
    /// number, so the failed one comes back later with a higher number
    /// instead of taking a number twice. Under the ordered policy the key
    /// waits, and the message keeps its number for its redelivery.
    fn spend_number(&mut self, a: &'a Ack, block_key: bool) {
        if block_key {
            return;
        }
        if let (Some(k), Some(n)) = (&a.partition_key, a.key_sequence) {
            self.key_sequences.push((k, n));
        }
    }

    /// The messages to dead-letter as JSON rows `[position, attempts,
    /// error]`, and their positions.
    #[cfg(any(feature = "sqlite", feature = "mysql"))]
    pub(crate) fn dead_rows(&self) -> (serde_json::Value, Vec<i64>) {
        let rows = self
            .dead
            .iter()
            .map(|(seq, attempts, error)| serde_json::json!([seq, attempts, error]))
            .collect();
        let positions = self.dead.iter().map(|d| d.0).collect();
        (serde_json::Value::Array(rows), positions)
    }

    /// Sorts `acks`; those whose bucket `still_owned` rejects are fenced.
    pub(crate) fn new(acks: &'a [Ack], still_owned: impl Fn(i32) -> bool) -> Self {
        let mut plan = AckPlan::default();
        for a in acks {
            if !still_owned(a.bucket) {
                plan.report.fenced += 1;
                if !plan.report.fenced_buckets.contains(&a.bucket) {
                    plan.report.fenced_buckets.push(a.bucket);
                }
                continue;
            }
            plan.report.applied += 1;
            let blocks = match &a.disposition {
                Disposition::Published => {
                    plan.published.push(a.seq);
                    if let (Some(k), Some(n)) = (&a.partition_key, a.key_sequence) {
                        plan.key_sequences.push((k, n));
                    }
                    false
                }
                Disposition::Retry {
                    at,
                    error,
                    block_key,
                } => {
                    plan.retry.push((a.seq, a.attempts, *at, error));
                    plan.spend_number(a, *block_key);
                    *block_key
                }
                Disposition::Dead { error, block_key } => {
                    plan.dead.push((a.seq, a.attempts, error));
                    plan.spend_number(a, *block_key);
                    *block_key
                }
            };
            if let Some(k) = &a.partition_key {
                if blocks {
                    plan.block.push((k, a.seq));
                } else if a.retried {
                    plan.unblock.push((k, a.seq));
                }
            }
        }
        plan
    }
}

/// What is in an outbox right now: what `stats()` returns and the relay
/// turns into gauges.
///
/// `pending` is everything not yet published nor dead-lettered, and splits
/// into what a relay can publish now (`ready`), what waits for a retry
/// (`retry_waiting`) and what waits behind an earlier message of its key
/// that failed (`parked`). "Wait until pending is 0" hangs while a key is
/// blocked; wait for `ready` instead, and alert on `parked`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Messages not yet published nor dead-lettered.
    pub pending: i64,
    /// Of those, the ones a relay may publish now.
    pub ready: i64,
    /// Of those, the ones whose retry is not due yet.
    pub retry_waiting: i64,
    /// Of those, the due ones held back behind an earlier message of
    /// their partition key that failed (ordered policy).
    pub parked: i64,
    /// How long the oldest pending message has waited.
    pub oldest_pending_age: Option<Duration>,
    /// Dead letters kept for an operator.
    pub dead_letters: i64,
    /// Dead tuples in the messages table (PostgreSQL).
    pub dead_tuples: Option<i64>,
    /// Age of the oldest transaction in this database that holds back
    /// vacuum, if any (PostgreSQL).
    pub oldest_xmin_age: Option<Duration>,
    /// Whether autovacuum runs on the messages table (`None`: not
    /// applicable).
    pub autovacuum: Option<bool>,
    /// Bytes the messages table takes on disk with its indexes
    /// (PostgreSQL, MySQL; the server's estimate on MySQL).
    pub table_bytes: Option<i64>,
    /// The last position assigned to an enqueued message: how many were
    /// ever enqueued, give or take the positions of rolled-back
    /// transactions. Its growth less the growth of `pending` is what left
    /// the outbox (published or dead-lettered). On MySQL, the
    /// `AUTO_INCREMENT` that `information_schema` reports (MySQL 8 caches
    /// it for `information_schema_stats_expiry`; MariaDB does not).
    pub last_position: Option<i64>,
}

impl StoreStats {
    /// The counts every backend reads, `ready` derived from them; the
    /// fields only some backends report are `None`.
    pub(crate) fn counted(
        pending: i64,
        retry_waiting: i64,
        parked: i64,
        oldest_pending_age: Option<Duration>,
        dead_letters: i64,
    ) -> Self {
        StoreStats {
            pending,
            ready: (pending - retry_waiting - parked).max(0),
            retry_waiting,
            parked,
            oldest_pending_age,
            dead_letters,
            ..StoreStats::default()
        }
    }
}

/// A retained published message and when it was published, from the
/// `published_since` method of each outbox.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PublishedMessage {
    /// The message.
    pub message: OutboxMessage,
    /// When the relay acknowledged it (the relay's clock).
    pub published_at: DateTime<Utc>,
}

/// Pending messages of one topic, from the `topic_stats` method of each
/// outbox.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TopicStats {
    /// The topic.
    pub topic: String,
    /// Its messages not yet published nor dead-lettered.
    pub pending: i64,
    /// When the oldest of them was written.
    pub oldest_created_at: DateTime<Utc>,
}

/// A relay that recorded a heartbeat, from the `relays` method of each
/// outbox. A relay that stopped cleanly is forgotten at once; one
/// that died stays listed, its heartbeat expired, until another relay
/// forgets it. Serializes as an object of its fields.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct RelayStatus {
    /// The relay's id.
    pub relay: Uuid,
    /// When its last heartbeat expires (the database's clock).
    pub heartbeat_expires_at: DateTime<Utc>,
    /// Whether that heartbeat is still current.
    pub alive: bool,
    /// The publisher's error, as of the relay's last heartbeat, while every
    /// publish fails (its health is `PublishFailing`).
    pub publish_error: Option<String>,
    /// The buckets whose unexpired leases it holds.
    pub leases: i64,
}

/// Parameters of [`StoreOps::heartbeat`](sealed::StoreOps::heartbeat).
#[derive(Debug, Clone)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct Heartbeat {
    /// The relay that is alive.
    pub(crate) relay: Uuid,
    /// How long its heartbeat counts.
    pub(crate) ttl: Duration,
    /// The publisher's last error while every publish fails (the relay's
    /// `PublishFailing`), for operators who read the relays table.
    pub(crate) publish_error: Option<String>,
}

/// Parameters of [`StoreOps::renew`](sealed::StoreOps::renew).
#[derive(Debug, Clone, Copy)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct Renew<'a> {
    /// The relay that holds the leases.
    pub(crate) relay: Uuid,
    /// The leases it believes it holds; only those with the same epoch are
    /// extended.
    pub(crate) leases: &'a [Lease],
    /// The new time to live, counted from the database's clock.
    pub(crate) ttl: Duration,
}

/// Parameters of [`StoreOps::acquire`](sealed::StoreOps::acquire).
#[derive(Debug, Clone, Copy)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct Acquire {
    /// The relay taking buckets.
    pub(crate) relay: Uuid,
    /// At most this many.
    pub(crate) max: usize,
    /// Their time to live.
    pub(crate) ttl: Duration,
}

/// Parameters of [`StoreOps::release`](sealed::StoreOps::release).
#[derive(Debug, Clone, Copy)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct Release<'a> {
    /// The relay giving buckets back.
    pub(crate) relay: Uuid,
    /// The leases it gives back (ignored where the epoch moved on).
    pub(crate) leases: &'a [Lease],
}

/// Parameters of [`StoreOps::claim`](sealed::StoreOps::claim).
#[derive(Debug, Clone, Copy)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct Claim<'a> {
    /// The buckets to read, or `None` for all of them.
    pub(crate) buckets: Option<&'a [i32]>,
    /// Number of buckets the key space is hashed into.
    pub(crate) bucket_count: i32,
    /// Messages due after this are left for later.
    pub(crate) now: DateTime<Utc>,
    /// At most this many messages.
    pub(crate) limit: i64,
    /// Positions still in flight (the batch being published), left out.
    pub(crate) exclude: &'a [i64],
    /// The claim stops at the first message that takes the payloads it
    /// holds past this many bytes (that message included, so a claim
    /// always takes at least one).
    pub(crate) max_bytes: i64,
}

/// Parameters of [`StoreOps::ack`](sealed::StoreOps::ack).
#[derive(Debug, Clone, Copy)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct AckBatch<'a> {
    /// The relay acknowledging.
    pub(crate) relay: Uuid,
    /// The leases it holds: the fencing tokens every ack is checked against.
    pub(crate) leases: &'a [Lease],
    /// The acknowledgements.
    pub(crate) acks: &'a [Ack],
    /// Keep published messages (retention) instead of deleting them.
    pub(crate) retain: bool,
    /// The relay's clock, stamped on retained messages.
    pub(crate) now: DateTime<Utc>,
}

/// Parameters of [`StoreOps::purge_published`](sealed::StoreOps::purge_published).
#[derive(Debug, Clone, Copy)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct Purge {
    /// Retained messages published before this go.
    pub(crate) before: DateTime<Utc>,
    /// At most this many in one call.
    pub(crate) limit: i64,
}

/// How far ahead a retry must be due for its message to sleep out of the
/// claims' path (and how early a relay's upkeep, run about once a second,
/// wakes it).
pub(crate) const SLEEP_BEYOND: Duration = Duration::from_secs(2);

/// The time after which a retry scheduled at `now` sleeps, and by which
/// the upkeep wakes sleeping messages.
pub(crate) fn sleep_horizon(now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(SLEEP_BEYOND).unwrap_or(chrono::Duration::MAX)
}

/// Parameters of [`StoreOps::park`](sealed::StoreOps::park).
#[derive(Debug, Clone, Copy)]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub struct Park {
    /// On a pass's first call: wake the sleeping messages due by then,
    /// and unpark the keys whose blocks lifted. `None` on the calls that
    /// only park more.
    pub(crate) wake_by: Option<DateTime<Utc>>,
    /// Park at most this many.
    pub(crate) limit: i64,
}

/// A source of cross-process wake-ups (PostgreSQL LISTEN).
#[async_trait]
#[allow(unreachable_pub)] // sealed: reachable only through `Store`
pub trait WakeSource: Send {
    /// Resolves on the next notification; errors on connection loss.
    async fn next(&mut self) -> Result<()>;
}

pub(crate) mod sealed {
    use super::*;

    #[allow(unreachable_pub)]
    /// The operations the relay needs from a backend. Sealed: it may
    /// change between minor versions.
    #[async_trait]
    pub trait StoreOps: Send + Sync + std::fmt::Debug + 'static {
        /// Fails if the tables are missing or newer than this crate.
        async fn check_schema(&self) -> Result<()>;
        /// Number of virtual partitions.
        async fn bucket_count(&self) -> Result<i32>;
        /// Records the relay as alive; returns how many relays are alive.
        async fn heartbeat(&self, p: Heartbeat) -> Result<usize>;
        /// Extends the leases still held with the same epoch; returns them.
        async fn renew(&self, p: Renew<'_>) -> Result<Vec<Lease>>;
        /// Takes up to `max` free or expired buckets.
        async fn acquire(&self, p: Acquire) -> Result<Vec<Lease>>;
        /// Gives buckets back so another relay can take them at once.
        async fn release(&self, p: Release<'_>) -> Result<()>;
        /// Removes the relay's heartbeat row.
        async fn leave(&self, relay: Uuid) -> Result<()>;
        /// Reads up to `limit` messages of the given buckets (all if
        /// `None`), in position order, skipping those not yet due and those
        /// behind a blocked key, and stopping at the byte budget.
        async fn claim(&self, p: Claim<'_>) -> Result<ClaimedBatch>;
        /// The last published per-key sequence number of each key that has
        /// one.
        async fn key_sequences(&self, keys: &[String]) -> Result<HashMap<String, i64>>;
        /// Applies acknowledgements, fenced by the leases' epochs.
        async fn ack(&self, p: AckBatch<'_>) -> Result<AckReport>;
        /// Folds up to `limit` of the per-key sequence numbers that
        /// acknowledgements recorded apart into their table; returns how
        /// many records it folded (0 where acknowledgements write them in
        /// place).
        async fn fold_key_sequences(&self, limit: i64) -> Result<u64>;
        /// Deletes up to `limit` retained published messages older than
        /// `before`.
        async fn purge_published(&self, p: Purge) -> Result<u64>;
        /// Gauges for metrics.
        async fn stats(&self) -> Result<StoreStats>;
        /// Pending messages per topic, by topic (gauges labelled by topic).
        async fn topic_stats(&self) -> Result<Vec<TopicStats>>;
        /// [`stats`](Self::stats) and [`topic_stats`](Self::topic_stats)
        /// together, for the relay's stats pass: one scan of the messages
        /// table where the backend can count both at once.
        async fn figures(&self) -> Result<(StoreStats, Vec<TopicStats>)> {
            Ok((self.stats().await?, self.topic_stats().await?))
        }
        /// Vacuums the messages table now.
        async fn vacuum(&self) -> Result<()>;
        /// With `p.wake_by`, wakes the sleeping messages due by then and
        /// unparks the keys whose blocks were lifted; then parks up to `p.limit`
        /// messages held behind blocked keys, so claims no longer read
        /// them; returns how many it parked. A relay's upkeep calls it
        /// about once a second, again at once while a call parks `limit`.
        async fn park(&self, p: Park) -> Result<u64>;
        /// The in-process wake-up signal raised by `commit`.
        fn local_signal(&self) -> std::sync::Arc<tokio::sync::Notify>;
        /// A cross-process wake-up source, if the backend has one.
        async fn listen(&self) -> Result<Option<Box<dyn WakeSource>>>;
    }
}

/// A storage backend the [`Relay`](crate::Relay) can drain. Implemented by
/// [`PgOutbox`](crate::PgOutbox), [`SqliteOutbox`](crate::SqliteOutbox) and
/// `MySqlOutbox` (feature `mysql`); sealed.
pub trait Store: sealed::StoreOps {}

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) use self::dead_letters::{blocking_message, warn_not_replayed, BlockSweep};
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) use self::dead_letters::{first_of_each_id, replay_report};
pub use self::dead_letters::{
    BlockedKey, BlockingMessage, DeadLetter, DeadLetterFilter, NotReplayed, ReplayReport,
};
