//! [`PgOutboxBuilder`]: the settings of a [`PgOutbox`] and their validation.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool};

use super::connection::Statements;
use super::locks::commit_order_lock_class;
use super::statements::Sql;
use super::wake::{WakeState, WakeUp};
use super::{Inner, PgOutbox};
use crate::error::{Error, Result};
use crate::store::{validate_max_payload, TableNames};

/// The longest notify interval a builder accepts.
const MAX_NOTIFY_INTERVAL: Duration = Duration::from_secs(10);

/// Configures a [`PgOutbox`].
#[derive(Debug)]
pub struct PgOutboxBuilder {
    pool: PgPool,
    schema: String,
    prefix: String,
    wake_up: WakeUp,
    commit_order_lock: bool,
    notify_interval: Duration,
    transaction_pooling: bool,
    relay_pool: Option<PgPool>,
    listen_options: Option<PgConnectOptions>,
    max_payload: usize,
}

impl PgOutboxBuilder {
    /// The defaults: schema `outbox`, no prefix, [`WakeUp::AfterCommit`]
    /// every 1 ms at most, commit-order lock on.
    pub(super) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            schema: "outbox".to_owned(),
            prefix: String::new(),
            wake_up: WakeUp::default(),
            commit_order_lock: true,
            notify_interval: Duration::from_millis(1),
            transaction_pooling: false,
            relay_pool: None,
            listen_options: None,
            max_payload: crate::DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    setters! {
        /// With [`WakeUp::AfterCommit`], the least time between two `NOTIFY`s
        /// the outbox sends after commits (default 1 ms, at most 10 s; see
        /// [`WakeUp::AfterCommit`]). A busy process then sends at most one
        /// notification per interval for the outbox, whatever its commit
        /// rate, and a commit waits at most this long (plus the `NOTIFY`'s
        /// round trip) for relays elsewhere to be woken. Zero sends one after
        /// each commit, coalescing only the commits made while the previous
        /// one was being sent.
        ///
        /// Before this crate moved wake-ups off producers' transactions, the
        /// interval spaced the enqueues that carried a `pg_notify`; zero made
        /// every enqueue carry one. For that, use [`WakeUp::InTransaction`].
        pub fn notify_interval(interval: Duration) => notify_interval = interval;

        /// The schema holding the crate's tables (default `outbox`; created by
        /// [`PgOutbox::migrate`]). Lowercase letters, digits and `_` only.
        pub fn schema(schema: impl Into<String>) => schema = schema.into();

        /// A prefix for the table names (default none), for several outboxes
        /// in one schema.
        pub fn table_prefix(prefix: impl Into<String>) => prefix = prefix.into();

        /// How commits wake relays in other processes (default
        /// [`WakeUp::AfterCommit`]).
        pub fn wake_up(wake_up: WakeUp) => wake_up = wake_up;

        /// Whether enqueue takes a commit-order lock per partition key (default
        /// on).
        ///
        /// With it, two transactions that enqueue for the same key commit in
        /// the order they enqueued, so positions follow commit order and the
        /// relay publishes each key in commit order even when the producer does
        /// not otherwise serialize writes to that key. The lock is a row lock on
        /// the key's slot in the outbox's `key_slots` table (65,536 rows), held
        /// from the enqueue to the commit: it creates no row version and takes
        /// no entry in the server's shared lock table, so a transaction may
        /// enqueue any number of keys. Two keys sharing a slot merely serialize
        /// their writers' commits. Code paths that enqueue several keys one by
        /// one in opposite orders can deadlock, as with any row locks;
        /// `enqueue_batch` takes its slots in a fixed order. Turn it off only if
        /// every producer already serializes writes per key (for example by
        /// locking the aggregate's row before enqueueing).
        pub fn commit_order_lock(on: bool) => commit_order_lock = on;

        /// Whether the pool reaches PostgreSQL through a pooler in transaction
        /// mode (PgBouncer's `pool_mode = transaction`, RDS Proxy, Supavisor's
        /// transaction port; default off).
        ///
        /// Turned on, the crate sends its statements unnamed (a named prepared
        /// statement would stay behind on a server connection the next
        /// transaction may not get), and runs those that are not part of the
        /// caller's transaction in a transaction of their own (a pooler may
        /// otherwise parse and bind one unnamed statement on two server
        /// connections). Enqueue inside a transaction, as always.
        ///
        /// `LISTEN` cannot work through such a pooler: give relays a direct
        /// connection with [`listen_options`](Self::listen_options), or they
        /// find messages committed in other processes at their poll interval
        /// (they say so once at start). A pooler in session mode needs no
        /// setting: the crate sends no start-up parameters and keeps no
        /// session state beyond a transaction.
        pub fn transaction_pooling(on: bool) => transaction_pooling = on;

        /// Where relays `LISTEN` for notifications: a direct connection to the
        /// server, bypassing a pooler in transaction mode (default: the
        /// connect options of the relay's pool, which is right without a
        /// pooler or with one in session mode). Each relay opens one
        /// connection of its own for it, outside the pools, and holds it
        /// while it runs.
        pub fn listen_options(options: PgConnectOptions) => listen_options = Some(options);

        /// The pool the relay's own statements run on: claims,
        /// acknowledgements, leases and maintenance (default: the pool the
        /// outbox was built with). Give the relay a pool of its own to bound
        /// the connections it takes apart from the application's; it needs
        /// two (a claim runs while the previous batch is acknowledged). Its
        /// `after_connect` hooks apply as to any pool.
        pub fn relay_pool(pool: PgPool) => relay_pool = Some(pool);

        /// The largest payload [`enqueue`](PgOutbox::enqueue) accepts, in bytes
        /// (default [`DEFAULT_MAX_PAYLOAD_BYTES`](crate::DEFAULT_MAX_PAYLOAD_BYTES),
        /// 1 MiB). A larger one is [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge)
        /// before anything is written. A relay's round holds at most its
        /// [`max_batch_bytes`](crate::RelayBuilder::max_batch_bytes) plus one
        /// such payload.
        pub fn max_payload_bytes(limit: usize) => max_payload = limit;
    }

    /// Validates the names and builds the outbox. Nothing is sent to the
    /// database.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidIdentifier`](crate::Error::InvalidIdentifier) if the
    /// schema is empty, or the schema or table prefix is too long for a
    /// PostgreSQL identifier, starts with a digit or holds anything but
    /// lowercase ASCII letters, digits and `_`, or starts with `pg_`;
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a payload
    /// limit of 0 or above 1 GiB, or a notify interval above 10 s.
    pub fn build(self) -> Result<PgOutbox> {
        let names = TableNames::new(Some(&self.schema), &self.prefix)?;
        let max_payload = validate_max_payload(self.max_payload)?;
        if self.notify_interval > MAX_NOTIFY_INTERVAL {
            return Err(Error::InvalidConfig {
                field: "notify_interval",
                reason: format!(
                    "must be at most {MAX_NOTIFY_INTERVAL:?}, not {:?}: relays in other \
                     processes would wait that long for a commit's notification",
                    self.notify_interval
                ),
            });
        }
        let lock_class = self
            .commit_order_lock
            .then(|| commit_order_lock_class(&names));
        let sql = Sql::new(&names);
        let wake = WakeState::new(
            self.wake_up,
            &self.schema,
            &self.prefix,
            self.notify_interval,
        );
        Ok(PgOutbox {
            inner: Arc::new(Inner {
                pool: self.pool,
                names,
                lock_class,
                sql,
                statements: Statements {
                    transaction_pooling: self.transaction_pooling,
                },
                relay_pool: self.relay_pool,
                listen_options: self.listen_options,
                max_payload,
                sweep: crate::store::BlockSweep::new(),
                wake,
                floor: super::floor::Floor::default(),
                bucket_claims: super::claims::BucketClaims::default(),
            }),
        })
    }
}
