//! The operator's side: dead letters listed (filtered, paged), replayed and
//! discarded, blocked keys listed and lifted, the pending count, retained
//! published messages.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::{Query, QueryAs};
use uuid::Uuid;

use super::decode::{dead_letter_from_row, published_from_row};
use super::PgOutbox;
use crate::error::{Error, Result};
use crate::message::{MessageId, OutboxMessage};
use crate::store::{
    blocking_message, warn_not_replayed, BlockedKey, DeadLetter, DeadLetterFilter, NotReplayed,
    ReplayReport,
};

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

    /// Dead letters that match `filter`, oldest position first: filter by
    /// topic, key, error text and time, and page with its limit and
    /// keyset cursor.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the read fails.
    pub async fn dead_letters_matching(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>> {
        let mut c = self.standalone().await?;
        let rows = bind_filter(
            sqlx::query(&self.inner.sql.dead_letters_matching).persistent(self.named()),
            filter,
        )
        .fetch_all(c.conn())
        .await?;
        c.finish().await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    /// Sends a dead letter again: it returns to the outbox at its original
    /// position with its attempts reset, ahead of any later message of its
    /// key, whose block it lifts. Of several dead letters of one id (the id
    /// was enqueued again after its first message was dead-lettered) the
    /// oldest goes back. Writes in its own transaction.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetterNotFound`] if there is no dead letter with this
    /// id; [`Error::DeadLetterIdPending`] if a message with this id is
    /// pending (the dead letter stays: replay it once that message is
    /// published, or discard it); [`Error::Database`] if the write fails.
    pub async fn replay_dead_letter(&self, id: MessageId) -> Result<()> {
        let report = self
            .replay_dead_letters(&DeadLetterFilter::new().id(id).limit(1))
            .await?;
        match (report.replayed, report.not_replayed.is_empty()) {
            (0, true) => Err(Error::DeadLetterNotFound(id)),
            (0, false) => Err(Error::DeadLetterIdPending(id)),
            _ => Ok(()),
        }
    }

    /// Sends every dead letter again (see [`replay_dead_letters`] for the
    /// rule); returns how many went back. A dead letter whose id is pending
    /// stays in the dead letters, with a warning logged; the filtered form
    /// reports each. Writes in its own transaction.
    ///
    /// [`replay_dead_letters`]: Self::replay_dead_letters
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the write fails; then none is replayed.
    pub async fn replay_all_dead_letters(&self) -> Result<u64> {
        let report = self.replay_dead_letters(&DeadLetterFilter::new()).await?;
        warn_not_replayed(&report);
        Ok(report.replayed)
    }

    /// Sends the dead letters that match `filter` again, oldest first, each
    /// to its original position with its attempts reset, lifting the block
    /// it holds on its key. A dead letter goes back only while no message
    /// with its id is pending, and of several dead letters of one id only
    /// the oldest goes back in one call: the others stay, unchanged, and
    /// are listed in the report. Writes in its own transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the write fails; then none is replayed.
    pub async fn replay_dead_letters(&self, filter: &DeadLetterFilter) -> Result<ReplayReport> {
        let mut c = self.standalone().await?;
        let (replayed, positions, ids): (i64, Vec<i64>, Vec<Uuid>) = bind_filter(
            sqlx::query_as(&self.inner.sql.replay_dead_letters).persistent(self.named()),
            filter,
        )
        .fetch_one(c.conn())
        .await?;
        c.finish().await?;
        let replayed = self.replayed(replayed as u64);
        Ok(ReplayReport {
            replayed,
            not_replayed: positions
                .into_iter()
                .zip(ids)
                .map(|(position, id)| NotReplayed {
                    id: MessageId::from_uuid(id),
                    position,
                })
                .collect(),
        })
    }

    /// Wakes the relays if anything came back to the outbox.
    fn replayed(&self, n: u64) -> u64 {
        if n > 0 {
            self.wake();
        }
        n
    }

    /// Deletes a dead letter for good and unblocks its key. Of several dead
    /// letters of one id, the oldest goes. Writes in its own transaction.
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

    /// The keys held back behind a failed message (ordered topics), by key:
    /// the position that blocks each, since when, and where the message at
    /// that position is. A block whose message is
    /// [`Gone`](crate::BlockingMessage::Gone) is swept away by a relay's
    /// next claim.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the read fails.
    pub async fn blocked_keys(&self) -> Result<Vec<BlockedKey>> {
        let mut c = self.standalone().await?;
        let rows: Vec<(String, i64, DateTime<Utc>, String)> =
            sqlx::query_as(&self.inner.sql.blocked_keys)
                .persistent(self.named())
                .fetch_all(c.conn())
                .await?;
        c.finish().await?;
        Ok(rows
            .into_iter()
            .map(|(partition_key, position, since, at)| BlockedKey {
                partition_key,
                position,
                since,
                message: blocking_message(&at),
            })
            .collect())
    }

    /// Lifts the block on `key`, whatever message it names, and wakes the
    /// relays; returns whether there was one. The message stays where it
    /// is: a dead letter stays dead, and a message still being retried
    /// blocks its key again if it fails again. The key's later messages may
    /// then be published before it: this is the operator's call. Writes in
    /// its own transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the write fails.
    pub async fn unblock(&self, key: &str) -> Result<bool> {
        let mut c = self.standalone().await?;
        let done = sqlx::query(&self.inner.sql.unblock_key)
            .persistent(self.named())
            .bind(key)
            .execute(c.conn())
            .await?;
        c.finish().await?;
        let lifted = done.rows_affected() > 0;
        if lifted {
            self.wake();
        }
        Ok(lifted)
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

/// The query types a filter is bound to: the listing decodes rows, the
/// replay a tuple, and sqlx gives `Query` and `QueryAs` no common `bind`.
trait BindFilter: Sized {
    fn bind_opt<T>(self, value: Option<T>) -> Self
    where
        T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send + 'static;
}

impl<'q> BindFilter for Query<'q, Postgres, PgArguments> {
    fn bind_opt<T>(self, value: Option<T>) -> Self
    where
        T: for<'a> sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres> + Send + 'static,
    {
        self.bind(value)
    }
}

impl<'q, O> BindFilter for QueryAs<'q, Postgres, O, PgArguments> {
    fn bind_opt<T>(self, value: Option<T>) -> Self
    where
        T: for<'a> sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres> + Send + 'static,
    {
        self.bind(value)
    }
}

/// Binds a filter as the eight parameters of `dead_letters_matching.sql`
/// and `replay_dead_letters.sql`.
fn bind_filter<Q: BindFilter>(q: Q, f: &DeadLetterFilter) -> Q {
    q.bind_opt(f.id.map(|id| id.as_uuid()))
        .bind_opt(f.topic.clone())
        .bind_opt(f.partition_key.clone())
        .bind_opt(f.error_contains.clone())
        .bind_opt(f.dead_since)
        .bind_opt(f.dead_before)
        .bind_opt(f.after_position)
        .bind_opt(f.limit.map(i64::from))
}
