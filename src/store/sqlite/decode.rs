//! Conversions between Rust values and their stored form: times as
//! microseconds since the Unix epoch, ids as 16-byte blobs, lists as JSON,
//! and rows as messages and leases.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::message::{Headers, MessageId, OutboxMessage};
use crate::store::Lease;

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn micros_after(t: DateTime<Utc>, d: Duration) -> i64 {
    micros(t).saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn decode_error(msg: String) -> Error {
    Error::Database(sqlx::Error::Decode(msg.into()))
}

pub(super) fn time_from_micros(us: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| decode_error(format!("time out of range: {us} µs since the epoch")))
}

pub(super) fn uuid_from_bytes(b: &[u8]) -> Result<Uuid> {
    Uuid::from_slice(b).map_err(|e| decode_error(format!("invalid message id: {e}")))
}

/// Decodes a message row. Headers that do not decode are left empty and
/// the reason returned beside the message: the relay dead-letters such a
/// row, an operator's listing shows it.
pub(super) fn message_from_row(r: &SqliteRow) -> Result<(OutboxMessage, Option<String>)> {
    let id: Vec<u8> = r.try_get("id")?;
    let headers: Option<String> = r.try_get("headers")?;
    let (headers, bad) = match OutboxMessage::headers_from_json(headers.as_deref()) {
        Ok(h) => (h, None),
        Err(e) => (Headers::new(), Some(e)),
    };
    let attempts: i32 = r.try_get("attempts")?;
    let message = OutboxMessage {
        seq: r.try_get("seq")?,
        id: MessageId::from_uuid(uuid_from_bytes(&id)?),
        topic: r.try_get("topic")?,
        partition_key: r.try_get("partition_key")?,
        event_type: r.try_get("event_type")?,
        schema_version: r.try_get("schema_version")?,
        payload: r.try_get("payload")?,
        content_type: r.try_get("content_type")?,
        headers,
        created_at: time_from_micros(r.try_get("created_at")?)?,
        attempt: attempts + 1,
        key_sequence: None,
    };
    Ok((message, bad))
}

/// A message row that must decode whole (retained published messages).
pub(super) fn whole_message_from_row(r: &SqliteRow) -> Result<OutboxMessage> {
    match message_from_row(r)? {
        (message, None) => Ok(message),
        (message, Some(bad)) => Err(decode_error(format!("message {}: {bad}", message.id()))),
    }
}

pub(super) fn leases_from_rows(rows: &[SqliteRow]) -> Result<Vec<Lease>> {
    rows.iter()
        .map(|r| {
            Ok(Lease {
                bucket: r.try_get(0)?,
                epoch: r.try_get(1)?,
            })
        })
        .collect()
}

pub(super) fn json(value: &serde_json::Value) -> String {
    value.to_string()
}
