//! [`PgOutboxBuilder`]: the settings of a [`PgOutbox`] and their validation.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPool;

use super::claim_pool::ClaimPool;
use super::locks::commit_order_lock_class;
use super::statements::Sql;
use super::wake::{WakeState, WakeUp};
use super::{Inner, PgOutbox};
use crate::error::Result;
use crate::store::TableNames;

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
        }
    }

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
    ///
    /// # Errors
    ///
    /// [`Error::InvalidIdentifier`](crate::Error::InvalidIdentifier) if the
    /// schema is empty, or the schema or table prefix is too long for a
    /// PostgreSQL identifier, starts with a digit or holds anything but
    /// lowercase ASCII letters, digits and `_`.
    pub fn build(self) -> Result<PgOutbox> {
        let names = TableNames::new(Some(&self.schema), &self.prefix)?;
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
                claim_pool: ClaimPool::default(),
                wake,
            }),
        })
    }
}
