//! Conversions between Rust values and their stored form: ids as 16-byte
//! binaries, keys as bytes, lists as JSON, times as `DATETIME(6)` in UTC,
//! and rows as messages and leases.

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::message::{Headers, MessageId, OutboxMessage};
use crate::store::Lease;

pub(super) fn decode_error(msg: String) -> Error {
    Error::Database(sqlx::Error::Decode(msg.into()))
}

pub(super) fn uuid_from_bytes(b: &[u8]) -> Result<Uuid> {
    Uuid::from_slice(b).map_err(|e| decode_error(format!("invalid message id: {e}")))
}

/// Text stored as bytes (partition keys): UTF-8 by construction.
pub(crate) fn text(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| decode_error(format!("stored text is not UTF-8: {e}")))
}

/// An optional text column. Read as bytes: sqlx takes a column compared
/// byte for byte (a `VARBINARY`, or text in a `_bin` collation, which the
/// server flags as binary) for a binary one.
pub(crate) fn opt_text(r: &MySqlRow, column: &str) -> Result<Option<String>> {
    let bytes: Option<Vec<u8>> = r.try_get(column)?;
    bytes.map(text).transpose()
}

/// A text column, read as [`opt_text`] reads one.
pub(crate) fn req_text(r: &MySqlRow, column: &str) -> Result<String> {
    text(r.try_get(column)?)
}

/// A time as JSON_TABLE reads it into a `DATETIME(6)` column.
pub(super) fn json_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Decodes a message row. Headers that do not decode are left empty and
/// the reason returned beside the message: the relay dead-letters such a
/// row, an operator's listing shows it.
pub(super) fn message_from_row(r: &MySqlRow) -> Result<(OutboxMessage, Option<String>)> {
    let id: Vec<u8> = r.try_get("id")?;
    let headers = opt_text(r, "headers")?;
    let (headers, bad) = match OutboxMessage::headers_from_json(headers.as_deref()) {
        Ok(h) => (h, None),
        Err(e) => (Headers::new(), Some(e)),
    };
    let attempts: i32 = r.try_get("attempts")?;
    let message = OutboxMessage {
        seq: r.try_get("seq")?,
        id: MessageId::from_uuid(uuid_from_bytes(&id)?),
        topic: req_text(r, "topic")?,
        partition_key: opt_text(r, "partition_key")?,
        event_type: req_text(r, "event_type")?,
        schema_version: r.try_get("schema_version")?,
        payload: r.try_get("payload")?,
        content_type: req_text(r, "content_type")?,
        headers,
        created_at: r.try_get("created_at")?,
        attempt: attempts + 1,
        key_sequence: None,
    };
    Ok((message, bad))
}

/// A message row that must decode whole (retained published messages).
pub(super) fn whole_message_from_row(r: &MySqlRow) -> Result<OutboxMessage> {
    match message_from_row(r)? {
        (message, None) => Ok(message),
        (message, Some(bad)) => Err(decode_error(format!("message {}: {bad}", message.id()))),
    }
}

pub(super) fn leases_from_rows(rows: &[MySqlRow]) -> Result<Vec<Lease>> {
    rows.iter()
        .map(|r| {
            Ok(Lease {
                bucket: r.try_get(0)?,
                epoch: r.try_get(1)?,
            })
        })
        .collect()
}

/// A list as the JSON text `JSON_TABLE` reads.
pub(super) fn json(value: &serde_json::Value) -> String {
    value.to_string()
}
