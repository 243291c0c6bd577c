//! Configuration of a [`SqliteOutbox`].

use std::sync::Arc;

use sqlx::sqlite::SqlitePool;
use tokio::sync::Notify;

use super::statements::Sql;
use super::{Inner, SqliteOutbox};
use crate::error::Result;
use crate::store::TableNames;

/// Configures a [`SqliteOutbox`].
#[derive(Debug)]
pub struct SqliteOutboxBuilder {
    pool: SqlitePool,
    prefix: String,
}

impl SqliteOutboxBuilder {
    pub(super) fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            prefix: "outbox_".to_owned(),
        }
    }

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
    ///
    /// # Errors
    ///
    /// [`Error::InvalidIdentifier`](crate::Error::InvalidIdentifier) if the
    /// table prefix holds anything but lowercase ASCII letters, digits and
    /// `_`, starts with a digit or is too long.
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
