//! # outbox
//!
//! The transactional outbox for [`sqlx`]: write a domain change and the
//! event that describes it in **one** transaction; a relay that ships with
//! the crate publishes committed events to a broker or webhook, per
//! partition key in commit order, with the message id as idempotency key.
//!
//! ## Quick start (PostgreSQL)
//!
//! ```no_run
//! use outbox::{Event, InMemoryPublisher, PgOutbox, Relay};
//! use serde::Serialize;
//!
//! #[derive(Serialize)]
//! struct CandidateHired {
//!     candidate_id: i64,
//! }
//!
//! impl Event for CandidateHired {
//!     const EVENT_TYPE: &'static str = "CandidateHired";
//!     fn topic(&self) -> std::borrow::Cow<'_, str> {
//!         "recruiting.candidates".into()
//!     }
//!     fn partition_key(&self) -> Option<String> {
//!         Some(self.candidate_id.to_string())
//!     }
//! }
//!
//! # async fn demo() -> outbox::Result<()> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
//! let outbox = PgOutbox::new(pool.clone());
//! outbox.migrate().await?; // creates schema `outbox` and its tables
//!
//! // Producer: the change and its event commit together, or not at all.
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE candidates SET status = 'hired' WHERE id = $1")
//!     .bind(42_i64)
//!     .execute(&mut *tx)
//!     .await?;
//! outbox.publish_event(&mut *tx, &CandidateHired { candidate_id: 42 }).await?;
//! outbox.commit(tx).await?; // commit + wake the relay
//!
//! // Relay: usually in the same service, or its own process.
//! let publisher = InMemoryPublisher::new();
//! let relay = Relay::builder(outbox.clone(), publisher.clone()).spawn()?;
//! // ...
//! relay.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! ## Delivery guarantee
//!
//! **At least once, in commit order per partition key.** A message is
//! published only if its transaction committed, and it stays in the outbox
//! until the publisher confirmed it. Messages with the same partition key
//! are published in the order their transactions committed, also with
//! several relays and across retries (under [`OrderingPolicy::Ordered`]);
//! different keys go in parallel. A message can be published more than once
//! in exactly these windows: (1) the relay crashes or loses its database
//! connection after the publisher confirmed and before the acknowledgement
//! committed; (2) a relay stalls past its lease (default 10 s) after
//! checking it and before publishing, and the new owner publishes too; (3)
//! a publisher reports a failure for a message the destination in fact
//! kept. Each redelivery carries the same [`MessageId`], so consumers that
//! deduplicate on it apply every message exactly once.
//!
//! ## What else is here
//!
//! - [`change`]: change events, where an update carries only the changed
//!   fields (an RFC 7386 merge patch).
//! - [`export`]: delta exports: a change log read page by page from a
//!   cursor, coalesced per entity, never skipping a late commit, with a
//!   snapshot-then-delta start for new consumers.
//! - [`inbox`]: idempotent consumers that record each message id with
//!   their effects, and spot gaps through per-key sequence numbers.
//! - [`publisher`]: the [`Publisher`] trait and the built-in publishers.
//! - [`RelayGroup`]: one process relaying many outboxes (a database per
//!   tenant or shard), with fair turns, added and removed while it runs.
//!
//! ## Which sqlx
//!
//! The outbox is built on sqlx 0.8, and its methods take sqlx 0.8
//! transactions, executors and pools, so the application's sqlx must be
//! that same version. [`outbox::sqlx`](crate::sqlx) re-exports it: name
//! its types through that path and they are the ones the outbox takes,
//! whatever else the dependency graph holds. sqlx 0.9 needs Rust 1.94 and is young; the outbox moves to
//! it once it has settled, in a release of its own that raises the minor
//! version (sqlx's types are part of this API, so the move is a breaking
//! change), with a note in the changelog. Until then, stay on sqlx 0.8.
//!
//! ## Features
//!
#![doc = document_features::document_features!()]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

#[macro_use]
mod setters;

pub mod change;
#[cfg(feature = "console")]
#[cfg_attr(docsrs, doc(cfg(feature = "console")))]
pub mod console;
mod error;
mod event;
pub mod export;
pub mod inbox;
mod message;
pub mod publisher;
mod relay;
mod store;
mod trace;

pub use crate::error::{Error, PublishError, PublishErrorKind, Result};
pub use crate::event::Event;
// The inbox's whole API: `Receipt` and each enabled backend's inbox.
pub use crate::inbox::*;
pub use crate::message::{
    BatchEnqueued, Enqueued, Headers, MessageId, NewMessage, OutboxMessage, CONTENT_TYPE_BYTES,
    CONTENT_TYPE_JSON, DEFAULT_MAX_PAYLOAD_BYTES, MAX_HEADER_VALUE_LEN, MAX_NAME_LEN,
};
pub use crate::publisher::{FnPublisher, InMemoryPublisher, LogPublisher, Publisher};
pub use crate::relay::{
    Health, OrderingPolicy, Relay, RelayBuilder, RelayGroup, RelayGroupBuilder, RelayHandle,
    RelayState, Retention, RetryPolicy, DEFAULT_BACKLOG_SHARE, DEFAULT_CONCURRENT_ROUNDS,
    DEFAULT_MAX_BATCH_BYTES,
};
#[cfg(feature = "mysql")]
pub use crate::store::mysql::{MySqlOutbox, MySqlOutboxBuilder};
#[cfg(feature = "postgres")]
pub use crate::store::postgres::{PgOutbox, PgOutboxBuilder, WakeUp};
#[cfg(feature = "sqlite")]
pub use crate::store::sqlite::{SqliteOutbox, SqliteOutboxBuilder};
pub use crate::store::{
    BlockedKey, BlockingMessage, DeadLetter, DeadLetterFilter, NotReplayed, PublishedMessage,
    RelayStatus, ReplayReport, Store, StoreStats, TopicStats,
};
pub use crate::trace::TraceLink;

/// The sqlx this crate is built on (0.8), so users can name its exact
/// version: types named through this path (`outbox::sqlx::PgPool`,
/// `outbox::sqlx::Transaction`) are the ones the outbox takes, whatever
/// other sqlx the dependency graph holds.
///
/// ```no_run
/// # async fn demo() -> outbox::Result<()> {
/// use outbox::sqlx::sqlite::SqlitePoolOptions;
///
/// let pool = SqlitePoolOptions::new().connect("sqlite://tracking.db").await?;
/// let outbox = outbox::SqliteOutbox::new(pool);
/// # let _ = outbox;
/// # Ok(()) }
/// ```
pub use sqlx;
