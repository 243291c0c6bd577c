//! Transactions begun so that a caller dropped meanwhile cannot leave a
//! pooled connection inside one.
//!
//! sqlx 0.8 (PostgreSQL, MySQL) does not roll back a `BEGIN` whose future
//! is dropped before the server answers, and returns the connection to the
//! pool inside that transaction: every later statement on it, the next
//! borrower's too (an acknowledgement, a producer's own), would run inside
//! it, hold its locks and never commit. A relay stopping aborts its passes
//! and abandons its last calls, wherever they are.

use sqlx::{Database, Pool, Transaction};

use crate::error::Result;

/// Begins a transaction on a connection of `pool` with `statement` in
/// place of a bare `BEGIN`, in a task of its own that runs to the end even
/// if the caller is dropped meanwhile: a transaction nobody waits for any
/// more is dropped in the task once begun, which rolls it back.
pub(crate) async fn begin_detached<DB: Database>(
    pool: &Pool<DB>,
    statement: Option<&'static str>,
) -> Result<Transaction<'static, DB>> {
    let pool = pool.clone();
    let begun = tokio::spawn(async move {
        match statement {
            Some(s) => pool.begin_with(s).await,
            None => pool.begin().await,
        }
    });
    Ok(begun.await.map_err(crate::Error::RelayTask)??)
}
