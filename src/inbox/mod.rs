//! The idempotent consumer ("inbox"): apply each message's effects exactly
//! once, although the relay delivers at least once.
//!
//! The inbox lives in the **consumer's** database, which need not be the
//! producer's, and has its own tables and migrations:
//! [`PgInbox`] (feature `postgres`; schema `outbox`, tables
//! `inbox_messages`, `inbox_keys`, `inbox_migrations`) and [`SqliteInbox`]
//! (feature `sqlite`; tables `outbox_inbox_messages`, `outbox_inbox_keys`,
//! `outbox_inbox_migrations`).
//!
//! A consumer calls `receive` **inside its own transaction**, before or
//! together with the effects of the message. `receive` records the pair
//! (consumer, message id); if the pair was already recorded it returns
//! [`Receipt::Duplicate`] and the consumer skips its effects. Because the
//! record and the effects commit together, a crash between them is
//! impossible: either both are in the database or neither is, and a
//! redelivery after a rollback is fresh again. Acknowledge the message to
//! the broker only after the commit.
//!
//! ```no_run
//! use outbox::{OutboxMessage, PgInbox, Receipt};
//! use serde::Deserialize;
//! use sqlx::PgPool;
//! use tokio::sync::mpsc::UnboundedReceiver;
//!
//! #[derive(Deserialize)]
//! struct CandidateHired {
//!     candidate_id: i64,
//! }
//!
//! /// Applies each `CandidateHired` once, however often it is delivered.
//! async fn consume(
//!     pool: PgPool,
//!     mut deliveries: UnboundedReceiver<OutboxMessage>,
//! ) -> outbox::Result<()> {
//!     let inbox = PgInbox::new(pool.clone());
//!     inbox.migrate().await?; // creates schema `outbox` and the inbox tables
//!
//!     while let Some(message) = deliveries.recv().await {
//!         let mut tx = pool.begin().await?;
//!         match inbox.receive(&mut *tx, "payroll", &message).await? {
//!             // Applied before: skip the effects. (The transaction is
//!             // still usable; rolling back or committing are both fine.)
//!             Receipt::Duplicate => {
//!                 tx.rollback().await?;
//!                 continue; // acknowledge the delivery to the broker
//!             }
//!             // Earlier messages of this key never arrived (or not yet).
//!             // This consumer applies it anyway; rolling back instead
//!             // would leave it unrecorded, to wait for a redelivery.
//!             Receipt::Gap { expected, got } => {
//!                 eprintln!("missing sequence numbers {expected}..{got}");
//!             }
//!             Receipt::Fresh => {}
//!         }
//!         let event: CandidateHired = message.payload_json()?;
//!         sqlx::query("INSERT INTO payroll_entries (candidate_id) VALUES ($1)")
//!             .bind(event.candidate_id)
//!             .execute(&mut *tx)
//!             .await?;
//!         tx.commit().await?; // the id and the effects, or neither
//!         // ... and only now acknowledge the delivery to the broker.
//!     }
//!     Ok(())
//! }
//! ```
//!
//! ## What counts as a duplicate
//!
//! - **The same id** for the same consumer. Each consumer name has its own
//!   record, so several consumers (services, or handlers within one) can
//!   share the tables.
//! - **A stale per-key sequence number.** Messages the relay publishes
//!   with a partition key carry a
//!   [sequence number](crate::OutboxMessage::key_sequence): 1, 2, 3, ...
//!   per key, the same number on every redelivery. `receive` keeps the last
//!   number per (consumer, key) and reports a message whose number is not
//!   above it as [`Receipt::Duplicate`] **even if its id is new** to the
//!   inbox, for example because the id was purged, or because a later
//!   message of the key was already applied. Its id is recorded all the
//!   same. A number more than one above the last is reported as
//!   [`Receipt::Gap`]: the message is recorded like a fresh one and the
//!   caller decides whether to apply it and commit, or to roll back and
//!   wait for the missing ones. A key seen for the first time expects
//!   number 1, so a consumer that starts on a stream already under way
//!   sees one gap per key.
//!
//! Sequence numbers come with three conditions:
//!
//! - **One numbering per consumer name.** The relay numbers a key's
//!   messages in one outbox, across all its topics. A consumer that
//!   receives from several outboxes (several producing services) uses one
//!   consumer name per outbox, or equal keys from different sources would
//!   mark each other's messages stale.
//! - **All of the key's messages.** A consumer that gets only some of a
//!   key's messages (one topic of several, a filtered subscription) sees
//!   gaps that never fill; it treats [`Receipt::Gap`] like
//!   [`Receipt::Fresh`], or uses `receive_id`. So does a consumer of a
//!   relay under [`OrderingPolicy::Unordered`](crate::OrderingPolicy),
//!   where a message set aside after a failure leaves a gap for good and
//!   comes later with a higher number.
//! - **One message of a key at a time**, as brokers deliver a partition.
//!   If two transactions receive messages 3 and 4 of a key concurrently,
//!   the second waits for the first; if 4 commits first, 3 is then
//!   reported as stale.
//!
//! [`receive_id`](PgInbox::receive_id) deduplicates by id alone, for
//! messages from other sources (a webhook, a command with an idempotency
//! key).
//!
//! ## Transactions and concurrency
//!
//! A duplicate is an answer, never an error: the caller's transaction
//! stays usable (`INSERT ... ON CONFLICT DO NOTHING`, no unique
//! violation). Two transactions that receive the same message at
//! once are serialized by the primary key: the second waits for the first
//! and is fresh only if the first rolled back. Under PostgreSQL's
//! `REPEATABLE READ` or `SERIALIZABLE` isolation that wait can end in a
//! serialization failure instead, which the caller retries as it retries
//! any other.
//!
//! On SQLite call `receive` as the first statement of the transaction: it
//! writes, so the transaction takes the write lock at once (see
//! [`SqliteInbox`]).
//!
//! ## Retention
//!
//! Recorded ids grow with the traffic; `purge_before` deletes those older
//! than the broker's redelivery horizon, in bounded batches. The per-key
//! sequence numbers (one row per consumer and key) are kept: they are what
//! still recognizes a stale redelivery of a keyed message whose id was
//! purged. A message without a key whose id was purged is fresh again.

/// The parts of an inbox every backend states alike: its `Debug` and the
/// methods whose only difference is the statements they run. Each backend
/// runs those in `insert` (records an id; true if it was new), `purge_batch`
/// (deletes one batch; how many) and `read_last_sequence`.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
macro_rules! inbox_api {
    ($inbox:ident, $pool:ty, $db:ty) => {
        impl std::fmt::Debug for $inbox {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($inbox))
                    .field("messages", &self.inner.names.messages)
                    .field("keys", &self.inner.names.keys)
                    .finish_non_exhaustive()
            }
        }

        impl $inbox {
            /// The pool [`migrate`](Self::migrate), [`purge_before`](Self::purge_before)
            /// and [`last_sequence`](Self::last_sequence) use.
            pub fn pool(&self) -> &$pool {
                &self.inner.pool
            }

            /// Records that `consumer` received the message `id`, for messages
            /// from other sources than the relay (no sequence tracking): returns
            /// [`Receipt::Fresh`] or [`Receipt::Duplicate`], like
            /// [`receive`](Self::receive).
            ///
            /// # Errors
            ///
            /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for an empty, oversized or NUL-holding consumer name, checked
            /// before anything is sent; [`Error::Database`](crate::Error::Database) if the database fails.
            pub async fn receive_id<'c, E>(
                &self,
                executor: E,
                consumer: &str,
                id: crate::message::MessageId,
            ) -> Result<Receipt>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                validate_consumer(consumer)?;
                let fresh = self.insert(executor, consumer, id, Utc::now()).await?;
                Ok(classify(fresh, None, false, None))
            }

            /// Deletes the ids of all consumers received before `before`, at most
            /// `batch` per statement (each its own transaction), until a statement
            /// deletes fewer. Returns how many were deleted. Pick `before` beyond
            /// the longest time the broker may redeliver a message.
            ///
            /// The per-key sequence numbers are kept (one row per consumer and
            /// key): after a keyed message's id is purged, its number still marks
            /// a redelivery of it as stale. A purged message without a key is fresh
            /// again if it is redelivered.
            ///
            /// # Errors
            ///
            /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a `batch` below 1; [`Error::Database`](crate::Error::Database) if the database
            /// fails.
            pub async fn purge_before(&self, before: DateTime<Utc>, batch: i64) -> Result<u64> {
                validate_batch(batch)?;
                let mut total = 0;
                loop {
                    let deleted = self.purge_batch(before, batch).await?;
                    total += deleted;
                    if deleted < batch as u64 {
                        return Ok(total);
                    }
                }
            }

            /// The last per-key sequence number `consumer` received for the
            /// partition key `key` (committed), if any.
            ///
            /// # Errors
            ///
            /// [`Error::Database`](crate::Error::Database) if the database fails.
            pub async fn last_sequence(&self, consumer: &str, key: &str) -> Result<Option<i64>> {
                self.read_last_sequence(consumer, key).await
            }
        }
    };
}

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "mysql")]
pub use self::mysql::{MySqlInbox, MySqlInboxBuilder};
#[cfg(feature = "postgres")]
pub use self::postgres::{PgInbox, PgInboxBuilder};
#[cfg(feature = "sqlite")]
pub use self::sqlite::{SqliteInbox, SqliteInboxBuilder};

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
use crate::error::{Error, Result};
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
use crate::message::OutboxMessage;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
use crate::message::MAX_NAME_LEN;

/// Records, for a fresh receipt, how long `message` took from its enqueue
/// to this receipt: the histogram `outbox_inbox_lag_seconds`, labelled by
/// consumer. It is measured against the producer's clock (the message's
/// `created_at`), so it includes any skew between the two machines, and
/// it is recorded before the caller's transaction commits.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
fn observed(consumer: &str, message: &OutboxMessage, receipt: Receipt) -> Receipt {
    if receipt.is_fresh() {
        let lag = (chrono::Utc::now() - message.created_at())
            .num_microseconds()
            .map_or(0.0, |us| us.max(0) as f64 / 1e6);
        metrics::histogram!("outbox_inbox_lag_seconds", "consumer" => consumer.to_owned())
            .record(lag);
    }
    receipt
}

/// What `receive` found for a message.
///
/// ```
/// use outbox::Receipt;
///
/// assert!(Receipt::Fresh.is_fresh());
/// assert!(Receipt::Duplicate.is_duplicate());
/// let gap = Receipt::Gap { expected: 3, got: 5 };
/// assert!(gap.is_fresh() && gap.is_gap() && !gap.is_duplicate());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Receipt {
    /// First delivery to this consumer: it is now recorded in the caller's
    /// transaction. Apply the effects and commit.
    Fresh,
    /// Already received (same id, or a per-key sequence number not above
    /// the last one received). Nothing new was recorded for the key; skip
    /// the effects. The transaction is still usable.
    Duplicate,
    /// First delivery, recorded like [`Receipt::Fresh`], but its per-key
    /// sequence number skips ahead: the messages numbered `expected` to
    /// `got - 1` have not been received. Committing accepts the gap (those
    /// messages will then count as stale); rolling back leaves this message
    /// unrecorded.
    Gap {
        /// The number that would have followed the last one received (1
        /// for a key not seen before).
        expected: i64,
        /// The message's number.
        got: i64,
    },
}

impl Receipt {
    /// True for [`Receipt::Duplicate`]: skip the effects.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Receipt::Duplicate)
    }

    /// True for [`Receipt::Fresh`] **and** [`Receipt::Gap`]: the message is
    /// new to this consumer and recorded in the transaction.
    pub fn is_fresh(&self) -> bool {
        !self.is_duplicate()
    }

    /// True for [`Receipt::Gap`].
    pub fn is_gap(&self) -> bool {
        matches!(self, Receipt::Gap { .. })
    }
}

/// Longest identifier PostgreSQL keeps without truncating.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
const MAX_IDENT_LEN: usize = 63;
/// Longest name the inbox appends to the prefix.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
const LONGEST_NAME: &str = "inbox_received_idx";

/// The quoted names of the inbox's tables, built from validated parts.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
#[derive(Debug, Clone)]
pub(crate) struct InboxNames {
    schema: Option<String>,
    prefix: String,
    pub(crate) messages: String,
    pub(crate) keys: String,
    pub(crate) migrations: String,
}

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
impl InboxNames {
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn new(schema: Option<&str>, prefix: &str) -> Result<Self> {
        Self::quoted(schema, prefix, '"')
    }

    /// The names of an inbox on MySQL: quoted with backticks.
    #[cfg(feature = "mysql")]
    pub(crate) fn mysql(prefix: &str) -> Result<Self> {
        Self::quoted(None, prefix, '`')
    }

    fn quoted(schema: Option<&str>, prefix: &str, quote: char) -> Result<Self> {
        let q = crate::store::quoted_qualifier(schema, prefix, quote)?;
        if prefix.len() + LONGEST_NAME.len() > MAX_IDENT_LEN {
            return Err(Error::InvalidIdentifier {
                what: "table prefix",
                value: prefix.to_owned(),
                reason: "is too long for a PostgreSQL identifier",
            });
        }
        Ok(Self {
            schema: schema.map(str::to_owned),
            prefix: prefix.to_owned(),
            messages: q("inbox_messages"),
            keys: q("inbox_keys"),
            migrations: q("inbox_migrations"),
        })
    }

    /// The schema, if any.
    #[cfg(feature = "postgres")]
    pub(crate) fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Replaces `{inbox_messages}`-style placeholders in a migration or
    /// query.
    pub(crate) fn render(&self, sql: &str) -> String {
        crate::store::RenderNames::render(self, sql)
    }
}

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
impl crate::store::RenderNames for InboxNames {
    fn render(&self, sql: &str) -> String {
        sql.replace("{schema}", self.schema.as_deref().unwrap_or(""))
            .replace("{prefix}", &self.prefix)
            .replace("{inbox_messages}", &self.messages)
            .replace("{inbox_keys}", &self.keys)
            .replace("{inbox_migrations}", &self.migrations)
    }
}

/// Checks a consumer name before the caller's transaction is touched: the
/// database would otherwise reject a NUL byte with an error that aborts it.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) fn validate_consumer(consumer: &str) -> Result<()> {
    let reason = if consumer.is_empty() {
        "must not be empty".to_owned()
    } else if consumer.len() > MAX_NAME_LEN {
        format!("is {} bytes, more than {MAX_NAME_LEN}", consumer.len())
    } else if consumer.contains('\0') {
        "contains a NUL byte".to_owned()
    } else {
        return Ok(());
    };
    Err(Error::InvalidConfig {
        field: "consumer",
        reason,
    })
}

/// Checks `purge_before`'s batch size.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) fn validate_batch(batch: i64) -> Result<()> {
    if batch < 1 {
        return Err(Error::InvalidConfig {
            field: "batch",
            reason: format!("must be at least 1, got {batch}"),
        });
    }
    Ok(())
}

/// The receipt for a message whose id was (`fresh_id`) or was not new.
/// `sequence` is the message's per-key number if the key is tracked;
/// `advanced` tells whether the key's last number moved to it, and
/// `previous` is the number it replaced (`None` for a new key).
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) fn classify(
    fresh_id: bool,
    sequence: Option<i64>,
    advanced: bool,
    previous: Option<i64>,
) -> Receipt {
    if !fresh_id {
        return Receipt::Duplicate;
    }
    let Some(got) = sequence else {
        return Receipt::Fresh;
    };
    if !advanced {
        return Receipt::Duplicate;
    }
    let expected = previous.unwrap_or(0).saturating_add(1);
    if got > expected {
        Receipt::Gap { expected, got }
    } else {
        Receipt::Fresh
    }
}

/// The partition key and sequence number `receive` tracks for a message,
/// if it has both.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) fn tracked(message: &OutboxMessage) -> Option<(&str, i64)> {
    Some((message.partition_key()?, message.key_sequence()?))
}

#[cfg(all(test, any(feature = "postgres", feature = "sqlite", feature = "mysql")))]
mod tests {
    use super::*;

    #[test]
    fn classify_covers_every_case() {
        assert_eq!(classify(false, None, false, None), Receipt::Duplicate);
        assert_eq!(classify(false, Some(1), false, None), Receipt::Duplicate);
        assert_eq!(classify(true, None, false, None), Receipt::Fresh);
        assert_eq!(classify(true, Some(1), true, None), Receipt::Fresh);
        assert_eq!(
            classify(true, Some(3), true, None),
            Receipt::Gap {
                expected: 1,
                got: 3
            }
        );
        assert_eq!(classify(true, Some(5), true, Some(4)), Receipt::Fresh);
        assert_eq!(
            classify(true, Some(7), true, Some(4)),
            Receipt::Gap {
                expected: 5,
                got: 7
            }
        );
        // Not above the last number: stale, although the id is new.
        assert_eq!(classify(true, Some(4), false, None), Receipt::Duplicate);
    }

    #[test]
    fn names_are_validated_and_quoted() {
        let n = InboxNames::new(Some("outbox"), "").unwrap();
        assert_eq!(n.messages, "\"outbox\".\"inbox_messages\"");
        assert_eq!(n.keys, "\"outbox\".\"inbox_keys\"");
        assert_eq!(n.migrations, "\"outbox\".\"inbox_migrations\"");
        let n = InboxNames::new(None, "outbox_").unwrap();
        assert_eq!(n.messages, "\"outbox_inbox_messages\"");
        assert_eq!(
            n.render("CREATE INDEX {prefix}inbox_received_idx ON {inbox_messages}"),
            "CREATE INDEX outbox_inbox_received_idx ON \"outbox_inbox_messages\""
        );
        for (schema, prefix) in [
            (Some("Outbox"), ""),
            (Some(""), ""),
            (Some("a\"b"), ""),
            (Some("pg_outbox"), ""),
            (None, "x;drop"),
            (None, "9x"),
        ] {
            assert!(matches!(
                InboxNames::new(schema, prefix),
                Err(Error::InvalidIdentifier { .. })
            ));
        }
        let longest = "p".repeat(MAX_IDENT_LEN - LONGEST_NAME.len());
        assert!(InboxNames::new(None, &longest).is_ok());
        assert!(matches!(
            InboxNames::new(None, &format!("{longest}p")),
            Err(Error::InvalidIdentifier { .. })
        ));
    }

    #[test]
    fn consumer_names_are_checked() {
        assert!(validate_consumer("payroll").is_ok());
        for bad in ["", "a\0b", &"c".repeat(MAX_NAME_LEN + 1)] {
            assert!(matches!(
                validate_consumer(bad),
                Err(Error::InvalidConfig {
                    field: "consumer",
                    ..
                })
            ));
        }
        assert!(validate_batch(1).is_ok());
        assert!(validate_batch(0).is_err());
    }
}
