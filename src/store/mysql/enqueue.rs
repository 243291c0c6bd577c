//! The write side: messages written on the caller's connection after the
//! commit-order locks of their keys, the commit that wakes the relays, and
//! the wake-up itself.

use std::collections::{BTreeSet, HashSet};

use chrono::Utc;
use sqlx::mysql::{MySql, MySqlConnection};
use sqlx::Transaction;
use uuid::Uuid;

use super::decode::{json, uuid_from_bytes};
use super::statements::INSERT_COLUMNS;
use super::{key_slot, Flavor, MySqlOutbox};
use crate::error::Result;
use crate::event::Event;
use crate::message::{BatchEnqueued, Enqueued, MessageId, NewMessage};
use crate::store::split_inserted;

/// Rows per insert statement in [`MySqlOutbox::enqueue_batch`], well below
/// MySQL's 65,535 parameters per prepared statement.
const BATCH_CHUNK: usize = 2000;
/// Bytes of values per insert statement, at most (a message larger than
/// this goes alone): every value of a prepared statement travels in one
/// packet, which the server refuses above `max_allowed_packet` (4 MiB by
/// default on MySQL 5.7, 16 MiB on MariaDB, 64 MiB on MySQL 8).
const BATCH_BYTES: usize = 3 << 20;
/// Slots locked per statement.
const SLOT_CHUNK: usize = 4096;

const _: () = assert!(BATCH_CHUNK * INSERT_COLUMNS <= 65_535 && SLOT_CHUNK <= 65_535);

impl MySqlOutbox {
    /// Writes one message on the caller's connection, normally `&mut *tx`
    /// inside the transaction that holds the domain change: first the
    /// commit-order lock of its partition key (a row lock held until that
    /// transaction ends), then the insert.
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
    /// untouched; [`Error::Database`](crate::Error::Database) if a statement
    /// fails (on a deadlock, error 1213, MySQL has rolled the whole
    /// transaction back: run it again).
    pub async fn enqueue(
        &self,
        conn: &mut MySqlConnection,
        message: NewMessage,
    ) -> Result<Enqueued> {
        let message = message.traced();
        message.validate()?;
        message.check_payload(self.inner.max_payload)?;
        let sql = &self.inner.sql;
        if let Some(key) = &message.partition_key {
            sqlx::query(&sql.lock_slot)
                .bind(i64::from(key_slot(key)))
                .fetch_all(&mut *conn)
                .await?;
        }
        let id = message.id;
        let headers = message.headers_json();
        let done = sqlx::query(&sql.insert)
            .bind(id.as_uuid().as_bytes().to_vec())
            .bind(message.topic)
            .bind(message.partition_key)
            .bind(message.event_type)
            .bind(message.schema_version)
            .bind(message.payload)
            .bind(message.content_type)
            .bind(headers)
            .bind(Utc::now())
            .execute(&mut *conn)
            .await?;
        Ok(if done.rows_affected() == 1 {
            Enqueued::Inserted(id)
        } else {
            Enqueued::Duplicate(id)
        })
    }

    /// Writes many messages in the given order (so messages of one key keep
    /// their order) on the caller's connection: the commit-order locks of
    /// all their keys first, in ascending slot order, then one multi-row
    /// insert per 2000 messages or 3 MiB of values, whichever comes first
    /// (so a batch of large payloads stays within the server's
    /// `max_allowed_packet`, which must still hold the largest message).
    ///
    /// Ids already present, or repeated within the batch, are reported in
    /// [`BatchEnqueued::duplicates`]. On MariaDB the insert returns the ids
    /// it wrote; on MySQL, when a chunk wrote fewer rows than it holds, the
    /// ids written are those found at the chunk's positions or later, which
    /// counts as written an id that another producer's transaction inserted
    /// and committed while this insert waited for it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMessage`](crate::Error::InvalidMessage) or
    /// [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge) if any
    /// message is refused before anything is sent, so nothing is written and
    /// the caller's transaction is untouched;
    /// [`Error::Database`](crate::Error::Database) if a statement fails.
    pub async fn enqueue_batch(
        &self,
        conn: &mut MySqlConnection,
        messages: impl IntoIterator<Item = NewMessage>,
    ) -> Result<BatchEnqueued> {
        let messages: Vec<NewMessage> = messages.into_iter().map(NewMessage::traced).collect();
        if messages.is_empty() {
            return Ok(BatchEnqueued::default());
        }
        for m in &messages {
            m.validate()?;
            m.check_payload(self.inner.max_payload)?;
        }
        let flavor = self.flavor(conn).await?;
        let sql = &self.inner.sql;
        let slots: BTreeSet<u32> = messages
            .iter()
            .filter_map(|m| m.partition_key.as_deref().map(key_slot))
            .collect();
        let slots: Vec<u32> = slots.into_iter().collect();
        for chunk in slots.chunks(SLOT_CHUNK) {
            let text = sql.lock_slots(chunk.len());
            let mut q = sqlx::query(&text);
            for s in chunk {
                q = q.bind(i64::from(*s));
            }
            // The text depends on the number of slots: do not fill the
            // statement cache with one entry per size.
            q.persistent(false).fetch_all(&mut *conn).await?;
        }
        let order: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        let created_at = Utc::now();
        let mut inserted: Vec<Uuid> = Vec::with_capacity(messages.len());
        let mut rest = messages.into_iter().peekable();
        loop {
            let chunk = next_chunk(&mut rest);
            if chunk.is_empty() {
                break;
            }
            let returning = flavor == Flavor::MariaDb;
            let text = sql.insert_batch(chunk.len(), returning);
            let ids: Vec<Uuid> = chunk.iter().map(|(m, _)| m.id.as_uuid()).collect();
            let mut q = sqlx::query(&text);
            for (m, headers) in chunk {
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
            let q = q.persistent(false);
            if returning {
                use sqlx::Row;
                for row in q.fetch_all(&mut *conn).await? {
                    let id: Vec<u8> = row.try_get(0)?;
                    inserted.push(uuid_from_bytes(&id)?);
                }
            } else {
                let done = q.execute(&mut *conn).await?;
                let distinct: HashSet<Uuid> = ids.iter().copied().collect();
                if done.rows_affected() == distinct.len() as u64 {
                    // Every id of the chunk went in (its first occurrence).
                    inserted.extend(distinct);
                } else if done.rows_affected() > 0 {
                    let hex: Vec<String> =
                        distinct.iter().map(|u| u.simple().to_string()).collect();
                    let found: Vec<Vec<u8>> = sqlx::query_scalar(&sql.present_ids)
                        .bind(json(&serde_json::json!(hex)))
                        .bind(done.last_insert_id())
                        .fetch_all(&mut *conn)
                        .await?;
                    for id in found {
                        inserted.push(uuid_from_bytes(&id)?);
                    }
                }
            }
        }
        Ok(split_inserted(order, inserted))
    }

    /// Enqueues a typed event: one line for the common case.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`](crate::Error::Serialize) if the event cannot be
    /// serialized (nothing is sent); otherwise as [`enqueue`](Self::enqueue).
    pub async fn publish_event<V>(&self, conn: &mut MySqlConnection, event: &V) -> Result<Enqueued>
    where
        V: Event + ?Sized,
    {
        self.enqueue(conn, NewMessage::from_event(event)?).await
    }

    /// Commits the caller's transaction, then wakes the relays in this
    /// process. Equivalent to `tx.commit()` plus a prompt wake-up; relays
    /// in other processes find the messages on their poll.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) if the commit fails; the
    /// relays are then not woken.
    pub async fn commit(&self, tx: Transaction<'_, MySql>) -> Result<()> {
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

/// The next rows of one insert statement, each with its headers as JSON:
/// at most [`BATCH_CHUNK`] rows and [`BATCH_BYTES`] of values, and at least
/// one row while any is left.
fn next_chunk(
    rest: &mut std::iter::Peekable<std::vec::IntoIter<NewMessage>>,
) -> Vec<(NewMessage, Option<String>)> {
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    while chunk.len() < BATCH_CHUNK {
        let Some(next) = rest.peek() else { break };
        let headers = next.headers_json();
        let size = row_bytes(next, headers.as_deref());
        if !chunk.is_empty() && bytes + size > BATCH_BYTES {
            break;
        }
        bytes += size;
        if let Some(m) = rest.next() {
            chunk.push((m, headers));
        }
    }
    chunk
}

/// The bytes a message's values take in an insert, about (each value's
/// length and a few bytes of framing).
fn row_bytes(m: &NewMessage, headers: Option<&str>) -> usize {
    const FRAMING: usize = 64;
    m.payload.len()
        + m.topic.len()
        + m.event_type.len()
        + m.content_type.len()
        + m.partition_key.as_ref().map_or(0, String::len)
        + headers.map_or(0, str::len)
        + FRAMING
}
