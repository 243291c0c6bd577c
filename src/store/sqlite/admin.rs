//! The administrative API: dead letters (list, replay, discard), the
//! pending count and retained published messages.

use sqlx::Row;

use super::decode::{message_from_row, time_from_micros};
use super::SqliteOutbox;
use crate::error::{Error, Result};
use crate::message::{MessageId, OutboxMessage};
use crate::store::DeadLetter;

impl SqliteOutbox {
    /// Dead letters, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the query fails or a stored row cannot be
    /// decoded.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(&self.inner.sql.dead_letters)
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    message: message_from_row(r)?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    dead_at: time_from_micros(r.try_get("dead_at")?)?,
                })
            })
            .collect()
    }

    /// Sends a dead letter again: it returns to the outbox at its original
    /// position with its attempts reset, ahead of any later message of its
    /// key. Writes in its own transaction.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetterNotFound`] if no dead letter has this id;
    /// [`Error::Database`] if a statement fails (nothing is changed).
    pub async fn replay_dead_letter(&self, id: MessageId) -> Result<()> {
        let n = self
            .replay_where(&self.inner.sql.replay_one, Some(id))
            .await?;
        if n == 0 {
            return Err(Error::DeadLetterNotFound(id));
        }
        Ok(())
    }

    /// Sends every dead letter again; returns how many. Writes in its own
    /// transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if a statement fails (nothing is changed).
    pub async fn replay_all_dead_letters(&self) -> Result<u64> {
        self.replay_where(&self.inner.sql.replay_all, None).await
    }

    /// Runs a replay's statements, binding `id` to each if given; returns
    /// how many dead letters went back to the outbox.
    async fn replay_where(&self, statements: &[String; 3], id: Option<MessageId>) -> Result<u64> {
        let id = id.map(|id| id.as_uuid().as_bytes().to_vec());
        // The insert comes first, so the transaction starts with a write.
        let mut tx = self.inner.pool.begin().await?;
        let mut moved = 0;
        for (i, sql) in statements.iter().enumerate() {
            let mut q = sqlx::query(sql);
            if let Some(id) = &id {
                q = q.bind(id.clone());
            }
            let done = q.execute(&mut *tx).await?;
            if i == 0 {
                moved = done.rows_affected();
            }
        }
        tx.commit().await?;
        if moved > 0 {
            self.wake();
        }
        Ok(moved)
    }

    /// Deletes a dead letter for good and unblocks its key. Writes in its
    /// own transaction.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetterNotFound`] if no dead letter has this id;
    /// [`Error::Database`] if a statement fails (nothing is changed).
    pub async fn discard_dead_letter(&self, id: MessageId) -> Result<()> {
        let sql = &self.inner.sql;
        let mut tx = self.inner.pool.begin().await?;
        let gone: Option<(Option<String>, i64)> = sqlx::query_as(&sql.discard_dead_letter)
            .bind(id.as_uuid().as_bytes().to_vec())
            .fetch_optional(&mut *tx)
            .await?;
        let Some((key, seq)) = gone else {
            return Err(Error::DeadLetterNotFound(id));
        };
        if let Some(key) = key {
            sqlx::query(&sql.discard_unblock)
                .bind(key)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.wake();
        Ok(())
    }

    /// Number of messages waiting to be published (dead letters excluded).
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the query fails.
    pub async fn pending_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(&self.inner.sql.pending_count)
            .fetch_one(&self.inner.pool)
            .await?)
    }

    /// Retained published messages, oldest first (empty unless the relay
    /// keeps published messages).
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the query fails or a stored row cannot be
    /// decoded.
    pub async fn published(&self, limit: i64) -> Result<Vec<OutboxMessage>> {
        let rows = sqlx::query(&self.inner.sql.published)
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(message_from_row).collect()
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
