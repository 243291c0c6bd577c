//! Configuration of a [`MySqlOutbox`].

use std::sync::{Arc, OnceLock};

use sqlx::mysql::MySqlPool;
use tokio::sync::Notify;

use super::statements::Sql;
use super::{Inner, MySqlOutbox};
use crate::error::Result;
use crate::store::{validate_max_payload, TableNames};

/// Configures a [`MySqlOutbox`].
#[derive(Debug)]
pub struct MySqlOutboxBuilder {
    pool: MySqlPool,
    prefix: String,
    max_payload: usize,
    relay_pool: Option<MySqlPool>,
}

impl MySqlOutboxBuilder {
    pub(super) fn new(pool: MySqlPool) -> Self {
        Self {
            pool,
            prefix: "outbox_".to_owned(),
            max_payload: crate::DEFAULT_MAX_PAYLOAD_BYTES,
            relay_pool: None,
        }
    }

    setters! {
        /// A prefix for the table names (default `outbox_`), for several
        /// outboxes in one database. Lowercase letters, digits and `_` only;
        /// may be empty. The tables live in the pool's database.
        pub fn table_prefix(prefix: impl Into<String>) => prefix = prefix.into();

        /// The largest payload [`enqueue`](MySqlOutbox::enqueue) accepts, in
        /// bytes (default [`DEFAULT_MAX_PAYLOAD_BYTES`](crate::DEFAULT_MAX_PAYLOAD_BYTES),
        /// 1 MiB). A larger one is [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge)
        /// before anything is written. The server's `max_allowed_packet`
        /// must hold a batch of them.
        pub fn max_payload_bytes(limit: usize) => max_payload = limit;

        /// The pool the relay's own statements run on: claims,
        /// acknowledgements, leases and maintenance (default: the pool the
        /// outbox was built with). Give the relay a pool of its own to bound
        /// the connections it takes apart from the application's, and to
        /// keep it off connections application code may have left in a bad
        /// state (see the README on sqlx's `begin()`); it needs two (a claim
        /// runs while the previous batch is acknowledged). Its
        /// `after_connect` hooks apply as to any pool.
        pub fn relay_pool(pool: MySqlPool) => relay_pool = Some(pool);
    }

    /// Validates the names and builds the outbox. Nothing is sent to the
    /// database.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidIdentifier`](crate::Error::InvalidIdentifier) if the
    /// table prefix holds anything but lowercase ASCII letters, digits and
    /// `_`, starts with a digit or is too long;
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a payload
    /// limit of 0 or above 1 GiB.
    pub fn build(self) -> Result<MySqlOutbox> {
        let names = TableNames::quoted(None, &self.prefix, '`')?;
        let max_payload = validate_max_payload(self.max_payload)?;
        let sql = Sql::new(&names);
        Ok(MySqlOutbox {
            inner: Arc::new(Inner {
                pool: self.pool,
                relay_pool: self.relay_pool,
                names,
                signal: Arc::new(Notify::new()),
                sql,
                max_payload,
                sweep: crate::store::BlockSweep::new(),
                flavor: OnceLock::new(),
            }),
        })
    }
}
