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
use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgRow, Postgres};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{FromRow, Transaction};

use crate::error::Result;

/// Begins a transaction on a connection of `pool`, with `statement` in
/// place of a bare `BEGIN`; a caller dropped meanwhile leaves no
/// transaction open on the connection ([`crate::store::begin`]).
pub(crate) async fn begin(
    pool: &PgPool,
    statement: Option<&'static str>,
) -> Result<Transaction<'static, Postgres>> {
    crate::store::begin::begin_detached(pool, statement).await
}

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
            Standalone::Tx(begin(pool, None).await?)
        } else {
            Standalone::Pooled(pool.acquire().await?)
        })
    }

    /// Statements run one at a time, each on a standalone connection of
    /// `pool`.
    pub(crate) fn alone(self, pool: &PgPool) -> Alone<'_> {
        Alone {
            statements: self,
            pool,
        }
    }
}

/// Runs single statements outside the caller's transaction, each on a
/// [`Standalone`] connection of its pool, named or not as the
/// [`Statements`] say.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Alone<'a> {
    statements: Statements,
    pool: &'a PgPool,
}

impl Alone<'_> {
    /// Runs a statement that returns no rows; the number of rows it
    /// touched.
    pub(crate) async fn execute(self, query: Query<'_, Postgres, PgArguments>) -> Result<u64> {
        let mut c = self.statements.standalone(self.pool).await?;
        let done = query
            .persistent(self.statements.named())
            .execute(c.conn())
            .await?;
        c.finish().await?;
        Ok(done.rows_affected())
    }

    /// Runs a statement that returns rows.
    pub(crate) async fn rows(self, query: Query<'_, Postgres, PgArguments>) -> Result<Vec<PgRow>> {
        let mut c = self.statements.standalone(self.pool).await?;
        let rows = query
            .persistent(self.statements.named())
            .fetch_all(c.conn())
            .await?;
        c.finish().await?;
        Ok(rows)
    }

    /// Runs a statement whose rows decode as `O`.
    pub(crate) async fn all<O>(self, query: QueryAs<'_, Postgres, O, PgArguments>) -> Result<Vec<O>>
    where
        O: Send + Unpin + for<'r> FromRow<'r, PgRow>,
    {
        let mut c = self.statements.standalone(self.pool).await?;
        let all = query
            .persistent(self.statements.named())
            .fetch_all(c.conn())
            .await?;
        c.finish().await?;
        Ok(all)
    }

    /// Runs a statement that returns exactly one value (a count, say).
    pub(crate) async fn one<O>(self, query: QueryScalar<'_, Postgres, O, PgArguments>) -> Result<O>
    where
        O: Send + Unpin,
        (O,): for<'r> FromRow<'r, PgRow>,
    {
        self.scalar(query)
            .await?
            .ok_or(crate::Error::Database(sqlx::Error::RowNotFound))
    }

    /// Runs a statement that returns one value, if any.
    pub(crate) async fn scalar<O>(
        self,
        query: QueryScalar<'_, Postgres, O, PgArguments>,
    ) -> Result<Option<O>>
    where
        O: Send + Unpin,
        (O,): for<'r> FromRow<'r, PgRow>,
    {
        let mut c = self.statements.standalone(self.pool).await?;
        let value = query
            .persistent(self.statements.named())
            .fetch_optional(c.conn())
            .await?;
        c.finish().await?;
        Ok(value)
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
