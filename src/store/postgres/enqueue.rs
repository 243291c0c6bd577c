//! The write side: messages enqueued in the caller's transaction, and the
//! commit that wakes the relays.

use sqlx::postgres::Postgres;
use sqlx::{Executor, Transaction};
use uuid::Uuid;

use super::PgOutbox;
use crate::error::Result;
use crate::event::Event;
use crate::message::{BatchEnqueued, Enqueued, MessageId, NewMessage};
use crate::store::split_inserted;

impl PgOutbox {
    /// Writes one message with the caller's executor, normally `&mut *tx`
    /// inside the transaction that holds the domain change.
    ///
    /// An id already in the outbox is reported as [`Enqueued::Duplicate`]
    /// without an error, so the caller's transaction stays usable.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMessage`](crate::Error::InvalidMessage) if a field
    /// is empty, too long or holds a NUL byte, or a header holds what
    /// publishers cannot carry, and [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge)
    /// above the builder's `max_payload_bytes`; both are checked before
    /// anything is sent, so the caller's transaction stays usable.
    /// [`Error::Database`](crate::Error::Database) if the insert fails (the
    /// tables are missing, the connection is lost); PostgreSQL then aborts
    /// the caller's transaction.
    pub async fn enqueue<'c, E>(&self, executor: E, message: NewMessage) -> Result<Enqueued>
    where
        E: Executor<'c, Database = Postgres>,
    {
        let message = message.traced();
        message.validate()?;
        message.check_payload(self.inner.max_payload)?;
        let id = message.id;
        let headers = message.headers_json();
        let inserted = sqlx::query(&self.inner.sql.insert)
            .persistent(self.named())
            .bind(id.as_uuid())
            .bind(message.topic)
            .bind(message.partition_key)
            .bind(message.event_type)
            .bind(message.schema_version)
            .bind(message.payload)
            .bind(message.content_type)
            .bind(headers)
            .bind(self.inner.lock_class)
            .bind(self.carried_channel())
            // The row count tells an insert from a duplicate: no row to
            // send back and decode on the hot path.
            .execute(executor)
            .await?
            .rows_affected();
        Ok(if inserted == 1 {
            Enqueued::Inserted(id)
        } else {
            Enqueued::Duplicate(id)
        })
    }

    /// Writes many messages in one statement, in the given order (so
    /// messages of one key keep their order).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMessage`](crate::Error::InvalidMessage) or
    /// [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge) if any
    /// message is refused (see [`enqueue`](Self::enqueue)); then none is
    /// written and nothing is sent. [`Error::Database`](crate::Error::Database)
    /// if the insert fails; PostgreSQL then aborts the caller's transaction.
    pub async fn enqueue_batch<'c, E>(
        &self,
        executor: E,
        messages: impl IntoIterator<Item = NewMessage>,
    ) -> Result<BatchEnqueued>
    where
        E: Executor<'c, Database = Postgres>,
    {
        let messages: Vec<NewMessage> = messages.into_iter().map(NewMessage::traced).collect();
        if messages.is_empty() {
            return Ok(BatchEnqueued::default());
        }
        let len = messages.len();
        let (mut ids, mut topics, mut keys, mut types) = (
            Vec::with_capacity(len),
            Vec::with_capacity(len),
            Vec::with_capacity(len),
            Vec::with_capacity(len),
        );
        let (mut versions, mut payloads, mut cts, mut headers) = (
            Vec::with_capacity(len),
            Vec::with_capacity(len),
            Vec::with_capacity(len),
            Vec::with_capacity(len),
        );
        for m in &messages {
            m.validate()?;
            m.check_payload(self.inner.max_payload)?;
        }
        let order: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        for m in messages {
            headers.push(m.headers_json());
            ids.push(m.id.as_uuid());
            topics.push(m.topic);
            keys.push(m.partition_key);
            types.push(m.event_type);
            versions.push(m.schema_version);
            payloads.push(m.payload);
            cts.push(m.content_type);
        }
        let inserted: Vec<Uuid> = sqlx::query_scalar(&self.inner.sql.insert_batch)
            .persistent(self.named())
            .bind(ids)
            .bind(topics)
            .bind(keys)
            .bind(types)
            .bind(versions)
            .bind(payloads)
            .bind(cts)
            .bind(headers)
            .bind(self.inner.lock_class)
            .bind(self.carried_channel())
            .fetch_all(executor)
            .await?;
        Ok(split_inserted(order, inserted))
    }

    /// Enqueues a typed event: one line for the common case.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`](crate::Error::Serialize) if the event cannot be
    /// serialized (nothing is sent), and otherwise what
    /// [`enqueue`](Self::enqueue) returns.
    pub async fn publish_event<'c, E, V>(&self, executor: E, event: &V) -> Result<Enqueued>
    where
        E: Executor<'c, Database = Postgres>,
        V: Event + ?Sized,
    {
        self.enqueue(executor, NewMessage::from_event(event)?).await
    }

    /// Commits the caller's transaction, then wakes the relays (see
    /// [`WakeUp`](super::WakeUp)): those in this process at once, those
    /// elsewhere by a `NOTIFY` the outbox sends after the commit returned.
    /// Equivalent to `tx.commit()` followed by [`wake`](Self::wake).
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) if the commit fails; no
    /// relay is woken then.
    pub async fn commit(&self, tx: Transaction<'_, Postgres>) -> Result<()> {
        tx.commit().await?;
        self.wake();
        Ok(())
    }
}
