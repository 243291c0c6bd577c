//! How the crate's statements reach the server, directly or through a
//! connection pooler.
//!
//! Behind a pooler in transaction mode (PgBouncer `pool_mode =
//! transaction`, RDS Proxy, Supavisor's transaction port) a client holds a
//! server connection only for the length of a transaction. Two things
//! follow, and [`Statements`] takes care of both when the builder says so:
//!
//! - A named prepared statement lives on one server connection, and the
//!   next transaction may run on another: statements are sent unnamed.
//! - An unnamed statement is parsed in one protocol exchange and bound in
//!   the next; outside a transaction the pooler may hand them to two
//!   different server connections ("unnamed prepared statement does not
//!   exist"). So a statement that does not run in the caller's
//!   transaction runs in a transaction of its own.

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use sqlx::Transaction;

use crate::error::Result;

/// Settings that decide how statements are sent.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Statements {
    /// The pool reaches the server through a transaction-pooling proxy.
    pub(crate) transaction_pooling: bool,
}

impl Statements {
    /// Whether statements may be prepared under a name and cached on the
    /// connection (not behind transaction pooling).
    pub(crate) fn named(self) -> bool {
        !self.transaction_pooling
    }

    /// A connection for statements outside the caller's transaction: a
    /// pooled connection, or behind transaction pooling a transaction of
    /// its own. Call [`Standalone::finish`] when done.
    pub(crate) async fn standalone(self, pool: &PgPool) -> Result<Standalone> {
        Ok(if self.transaction_pooling {
            Standalone::Tx(pool.begin().await?)
        } else {
            Standalone::Pooled(pool.acquire().await?)
        })
    }
}

/// A connection for statements that are not part of the caller's
/// transaction.
#[derive(Debug)]
pub(crate) enum Standalone {
    /// A connection from the pool; each statement commits on its own.
    Pooled(PoolConnection<Postgres>),
    /// A transaction of its own, committed by [`finish`](Self::finish).
    Tx(Transaction<'static, Postgres>),
}

impl Standalone {
    /// The connection to run statements on.
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        match self {
            Standalone::Pooled(c) => c,
            Standalone::Tx(t) => t,
        }
    }

    /// Commits the transaction, if there is one.
    pub(crate) async fn finish(self) -> Result<()> {
        if let Standalone::Tx(t) = self {
            t.commit().await?;
        }
        Ok(())
    }
}
