//! The write side: messages written with the caller's executor, the commit
//! that wakes the relays, and the wake-up itself.

use chrono::Utc;
use sqlx::sqlite::Sqlite;
use sqlx::{Executor, Transaction};
use uuid::Uuid;

use super::decode::{micros, uuid_from_bytes};
use super::statements::INSERT_COLUMNS;
use super::SqliteOutbox;
use crate::error::Result;
use crate::event::Event;
use crate::message::{BatchEnqueued, Enqueued, MessageId, NewMessage};
use crate::store::split_inserted;

/// Rows per statement in [`SqliteOutbox::enqueue_batch`], well below
/// SQLite's limit of 32766 bound parameters per statement.
const BATCH_CHUNK: usize = 2000;

const _: () = assert!(BATCH_CHUNK * INSERT_COLUMNS <= 32766);

impl SqliteOutbox {
    /// Writes one message with the caller's executor, normally `&mut *tx`
    /// inside the transaction that holds the domain change.
    ///
    /// An id already in the outbox is reported as [`Enqueued::Duplicate`]
    /// without an error, so the caller's transaction stays usable.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMessage`](crate::Error::InvalidMessage) if the
    /// message is refused before anything is sent (empty or oversized name,
    /// NUL byte, a header publishers cannot carry), and
    /// [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge) above the
    /// builder's `max_payload_bytes`, so the caller's transaction is
    /// untouched;
    /// [`Error::Database`](crate::Error::Database) if the insert fails.
    pub async fn enqueue<'c, E>(&self, executor: E, message: NewMessage) -> Result<Enqueued>
    where
        E: Executor<'c, Database = Sqlite>,
    {
        let message = message.traced();
        message.validate()?;
        message.check_payload(self.inner.max_payload)?;
        let id = message.id;
        let headers = message.headers_json();
        let seq: Option<i64> = sqlx::query_scalar(&self.inner.sql.insert)
            .bind(id.as_uuid().as_bytes().to_vec())
            .bind(message.topic)
            .bind(message.partition_key)
            .bind(message.event_type)
            .bind(message.schema_version)
            .bind(message.payload)
            .bind(message.content_type)
            .bind(headers)
            .bind(micros(Utc::now()))
            .fetch_optional(executor)
            .await?;
        Ok(match seq {
            Some(_) => Enqueued::Inserted(id),
            None => Enqueued::Duplicate(id),
        })
    }

    /// Writes many messages in the given order (so messages of one key keep
    /// their order): one multi-row statement per 2000 messages, all sent
    /// with the caller's executor in one call.
    ///
    /// Ids already present, or repeated within the batch, are reported in
    /// [`BatchEnqueued::duplicates`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMessage`](crate::Error::InvalidMessage) or
    /// [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge) if any
    /// message is refused before anything is sent, so nothing is written and
    /// the caller's transaction is untouched;
    /// [`Error::Database`](crate::Error::Database) if the insert fails.
    pub async fn enqueue_batch<'c, E>(
        &self,
        executor: E,
        messages: impl IntoIterator<Item = NewMessage>,
    ) -> Result<BatchEnqueued>
    where
        E: Executor<'c, Database = Sqlite>,
    {
        let messages: Vec<NewMessage> = messages.into_iter().map(NewMessage::traced).collect();
        if messages.is_empty() {
            return Ok(BatchEnqueued::default());
        }
        for m in &messages {
            m.validate()?;
            m.check_payload(self.inner.max_payload)?;
        }
        let order: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        let len = messages.len();
        let chunks = (0..len)
            .step_by(BATCH_CHUNK)
            .map(|start| (len - start).min(BATCH_CHUNK));
        let sql = self.inner.sql.insert_batch(chunks);
        let created_at = micros(Utc::now());
        let mut q = sqlx::query_scalar::<_, Vec<u8>>(&sql);
        for m in messages {
            let headers = m.headers_json();
            q = q
                .bind(m.id.as_uuid().as_bytes().to_vec())
                .bind(m.topic)
                .bind(m.partition_key)
                .bind(m.event_type)
                .bind(m.schema_version)
                .bind(m.payload)
                .bind(m.content_type)
                .bind(headers)
                .bind(created_at);
        }
        // The text depends on the batch's size: do not fill the statement
        // cache with one entry per size.
        let inserted = q.persistent(false).fetch_all(executor).await?;
        let inserted = inserted
            .iter()
            .map(|b| uuid_from_bytes(b))
            .collect::<Result<Vec<Uuid>>>()?;
        Ok(split_inserted(order, inserted))
    }

    /// Enqueues a typed event: one line for the common case.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`](crate::Error::Serialize) if the event cannot be
    /// serialized (nothing is sent); otherwise as [`enqueue`](Self::enqueue).
    pub async fn publish_event<'c, E, V>(&self, executor: E, event: &V) -> Result<Enqueued>
    where
        E: Executor<'c, Database = Sqlite>,
        V: Event + ?Sized,
    {
        self.enqueue(executor, NewMessage::from_event(event)?).await
    }

    /// Commits the caller's transaction, then wakes the relays in this
    /// process. Equivalent to `tx.commit()` plus a prompt wake-up; relays
    /// in other processes find the messages on their poll.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) if the commit fails; the
    /// relays are then not woken.
    pub async fn commit(&self, tx: Transaction<'_, Sqlite>) -> Result<()> {
        tx.commit().await?;
        self.wake();
        Ok(())
    }

    /// Wakes the relays in this process now, as after a commit.
    pub fn wake(&self) {
        self.inner.signal.notify_waiters();
        self.inner.signal.notify_one();
    }
}
