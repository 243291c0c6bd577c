//! Conversions between Rust values and their stored form: times as
//! microseconds since the Unix epoch, ids as 16-byte blobs, lists as JSON,
//! and rows as messages and leases.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::error::Result;
use crate::message::{MessageId, OutboxMessage};
pub(super) use crate::store::decode::{
    decode_error, leases_from_rows, split_headers, uuid_from_bytes, whole,
};

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn micros_after(t: DateTime<Utc>, d: Duration) -> i64 {
    micros(t).saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

pub(super) fn time_from_micros(us: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| decode_error(format!("time out of range: {us} µs since the epoch")))
}

/// Decodes a message row. Headers that do not decode are left empty and
/// the reason returned beside the message: the relay dead-letters such a
/// row, an operator's listing shows it.
pub(super) fn message_from_row(r: &SqliteRow) -> Result<(OutboxMessage, Option<String>)> {
    let id: Vec<u8> = r.try_get("id")?;
    let headers: Option<String> = r.try_get("headers")?;
    let (headers, bad) = split_headers(headers.as_deref());
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
    whole(message_from_row(r)?)
}

pub(super) fn json(value: &serde_json::Value) -> String {
    value.to_string()
}
