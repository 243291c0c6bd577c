//! The administrative API: dead letters (list with filters and paging,
//! replay, discard), blocked keys (list, lift), the pending count and
//! retained published messages.

use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteRow};
use sqlx::Row;

use super::decode::{
    json, message_from_row, micros, time_from_micros, uuid_from_bytes, whole_message_from_row,
};
use super::SqliteOutbox;
use crate::error::{Error, Result};
use crate::message::{MessageId, OutboxMessage};
use crate::store::{
    blocking_message, first_of_each_id, replay_report, warn_not_replayed, BlockedKey, DeadLetter,
    DeadLetterFilter, ReplayReport,
};

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
        rows.iter().map(dead_letter_from_row).collect()
    }

    /// Dead letters that match `filter`, oldest position first: filter by
    /// topic, key, error text and time, and page with its limit and
    /// keyset cursor.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the query fails or a stored row cannot be
    /// decoded.
    pub async fn dead_letters_matching(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>> {
        let rows = bind_filter(sqlx::query(&self.inner.sql.dead_letters_matching), filter)
            .fetch_all(&self.inner.pool)
            .await?;
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
    /// [`Error::DeadLetterNotFound`] if no dead letter has this id;
    /// [`Error::DeadLetterIdPending`] if a message with this id is pending
    /// (the dead letter stays: replay it once that message is published, or
    /// discard it); [`Error::Database`] if a statement fails (nothing is
    /// changed).
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
    /// [`Error::Database`] if a statement fails (nothing is changed).
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
    /// [`Error::Database`] if a statement fails (nothing is changed).
    pub async fn replay_dead_letters(&self, filter: &DeadLetterFilter) -> Result<ReplayReport> {
        let sql = &self.inner.sql;
        // IMMEDIATE: the replay reads before it writes, and a deferred
        // transaction could then fail with SQLITE_BUSY instead of waiting.
        let mut tx = self.inner.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<(i64, Vec<u8>)> = bind_filter(sqlx::query_as(&sql.replay_candidates), filter)
            .fetch_all(&mut *tx)
            .await?;
        let candidates = rows
            .into_iter()
            .map(|(seq, id)| Ok((seq, MessageId::from_uuid(uuid_from_bytes(&id)?))))
            .collect::<Result<Vec<_>>>()?;
        let offered = json(&serde_json::json!(first_of_each_id(&candidates)));
        let inserted: Vec<i64> = sqlx::query_scalar(&sql.replay_insert)
            .bind(offered)
            .fetch_all(&mut *tx)
            .await?;
        if !inserted.is_empty() {
            let back = json(&serde_json::json!(inserted));
            sqlx::query(&sql.replay_unblock)
                .bind(&back)
                .execute(&mut *tx)
                .await?;
            sqlx::query(&sql.replay_delete)
                .bind(&back)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if !inserted.is_empty() {
            self.wake();
        }
        Ok(replay_report(&candidates, &inserted))
    }

    /// Deletes a dead letter for good and unblocks its key. Of several dead
    /// letters of one id, the oldest goes. Writes in its own transaction.
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

    /// The keys held back behind a failed message (ordered topics), by key:
    /// the position that blocks each, since when, and where the message at
    /// that position is. A block whose message is
    /// [`Gone`](crate::BlockingMessage::Gone) is swept away by a relay's
    /// next claim.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the query fails or a stored time is out of
    /// range.
    pub async fn blocked_keys(&self) -> Result<Vec<BlockedKey>> {
        let rows: Vec<(String, i64, i64, String)> = sqlx::query_as(&self.inner.sql.blocked_keys)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.into_iter()
            .map(|(partition_key, position, since, at)| {
                Ok(BlockedKey {
                    partition_key,
                    position,
                    since: time_from_micros(since)?,
                    message: blocking_message(&at),
                })
            })
            .collect()
    }

    /// Lifts the block on `key`, whatever message it names, and wakes the
    /// relay; returns whether there was one. The message stays where it
    /// is: a dead letter stays dead, and a message still being retried
    /// blocks its key again if it fails again. The key's later messages may
    /// then be published before it: this is the operator's call.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the write fails.
    pub async fn unblock(&self, key: &str) -> Result<bool> {
        let done = sqlx::query(&self.inner.sql.unblock_key)
            .bind(key)
            .execute(&self.inner.pool)
            .await?;
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
        rows.iter().map(whole_message_from_row).collect()
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

fn dead_letter_from_row(r: &SqliteRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        message: message_from_row(r)?.0,
        attempts: r.try_get("attempts")?,
        last_error: r.try_get("last_error")?,
        dead_at: time_from_micros(r.try_get("dead_at")?)?,
    })
}

/// Binds a filter as the eight parameters of `dead_letters_matching.sql`
/// and `replay_candidates.sql`.
fn bind_filter<'q, Q: BindFilter<'q>>(q: Q, f: &DeadLetterFilter) -> Q {
    q.bind_opt(f.id.map(|id| id.as_uuid().as_bytes().to_vec()))
        .bind_opt(f.topic.clone())
        .bind_opt(f.partition_key.clone())
        .bind_opt(f.error_contains.clone())
        .bind_opt(f.dead_since.map(micros))
        .bind_opt(f.dead_before.map(micros))
        .bind_opt(f.after_position)
        // SQLite reads a negative limit as none.
        .bind_opt(Some(f.limit.map_or(-1, i64::from)))
}

/// The query types a filter is bound to: the listing decodes rows, the
/// replay's candidates a tuple, and sqlx gives `Query` and `QueryAs` no
/// common `bind`.
trait BindFilter<'q>: Sized {
    fn bind_opt<T>(self, value: Option<T>) -> Self
    where
        T: sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Send + 'q;
}

impl<'q> BindFilter<'q> for sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>> {
    fn bind_opt<T>(self, value: Option<T>) -> Self
    where
        T: sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Send + 'q,
    {
        self.bind(value)
    }
}

impl<'q, O> BindFilter<'q> for sqlx::query::QueryAs<'q, Sqlite, O, SqliteArguments<'q>> {
    fn bind_opt<T>(self, value: Option<T>) -> Self
    where
        T: sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Send + 'q,
    {
        self.bind(value)
    }
}
