//! The operator's side: dead letters listed, replayed and discarded, the
//! pending count, retained published messages.

use super::decode::{dead_letter_from_row, published_from_row};
use super::PgOutbox;
use crate::error::{Error, Result};
use crate::message::{MessageId, OutboxMessage};
use crate::store::DeadLetter;

impl PgOutbox {
    /// Dead letters, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the read fails (also for a negative `limit`).
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>> {
        let mut c = self.standalone().await?;
        let rows = sqlx::query(&self.inner.sql.dead_letters)
            .persistent(self.named())
            .bind(limit)
            .fetch_all(c.conn())
            .await?;
        c.finish().await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    /// Sends a dead letter again: it returns to the outbox at its original
    /// position with its attempts reset, ahead of any later message of its
    /// key. Writes in its own transaction.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetterNotFound`] if there is no dead letter with this
    /// id, and [`Error::Database`] if the write fails.
    pub async fn replay_dead_letter(&self, id: MessageId) -> Result<()> {
        let mut c = self.standalone().await?;
        let done = sqlx::query(&self.inner.sql.replay_dead_letter)
            .persistent(self.named())
            .bind(id.as_uuid())
            .execute(c.conn())
            .await?;
        c.finish().await?;
        if self.replayed(done.rows_affected()) == 0 {
            return Err(Error::DeadLetterNotFound(id));
        }
        Ok(())
    }

    /// Sends every dead letter again; returns how many. Writes in its own
    /// transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the write fails; then none is replayed.
    pub async fn replay_all_dead_letters(&self) -> Result<u64> {
        let mut c = self.standalone().await?;
        let done = sqlx::query(&self.inner.sql.replay_all_dead_letters)
            .persistent(self.named())
            .execute(c.conn())
            .await?;
        c.finish().await?;
        Ok(self.replayed(done.rows_affected()))
    }

    /// Wakes the relays if anything came back to the outbox.
    fn replayed(&self, n: u64) -> u64 {
        if n > 0 {
            self.wake();
        }
        n
    }

    /// Deletes a dead letter for good and unblocks its key. Writes in its
    /// own transaction.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetterNotFound`] if there is no dead letter with this
    /// id, and [`Error::Database`] if the write fails.
    pub async fn discard_dead_letter(&self, id: MessageId) -> Result<()> {
        let mut c = self.standalone().await?;
        let n: i64 = sqlx::query_scalar(&self.inner.sql.discard_dead_letter)
            .persistent(self.named())
            .bind(id.as_uuid())
            .fetch_one(c.conn())
            .await?;
        c.finish().await?;
        if n == 0 {
            return Err(Error::DeadLetterNotFound(id));
        }
        self.wake();
        Ok(())
    }

    /// Number of messages waiting to be published (dead letters excluded).
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the count fails.
    pub async fn pending_count(&self) -> Result<i64> {
        let mut c = self.standalone().await?;
        let n = sqlx::query_scalar(&self.inner.sql.pending_count)
            .persistent(self.named())
            .fetch_one(c.conn())
            .await?;
        c.finish().await?;
        Ok(n)
    }

    /// Retained published messages, oldest first (empty unless the relay
    /// keeps published messages).
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the read fails (also for a negative `limit`).
    pub async fn published(&self, limit: i64) -> Result<Vec<OutboxMessage>> {
        let mut c = self.standalone().await?;
        let rows = sqlx::query(&self.inner.sql.published)
            .persistent(self.named())
            .bind(limit)
            .fetch_all(c.conn())
            .await?;
        c.finish().await?;
        rows.iter().map(published_from_row).collect()
    }

    /// What is in the outbox now: pending messages split into ready,
    /// waiting for a retry and parked behind a blocked key, the oldest
    /// one's age, dead letters, and on PostgreSQL the table's health.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) if the query fails.
    pub async fn stats(&self) -> Result<crate::store::StoreStats> {
        crate::store::sealed::StoreOps::stats(self).await
    }
}
