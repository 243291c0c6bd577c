//! Conversions between Rust values and their stored form: ids as 16-byte
//! binaries, keys as bytes, lists as JSON, times as `DATETIME(6)` in UTC,
//! and rows as messages and leases.

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::Row;

use crate::error::Result;
use crate::message::{MessageId, OutboxMessage};
pub(super) use crate::store::decode::{
    decode_error, leases_from_rows, split_headers, uuid_from_bytes, whole,
};

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
    let (headers, bad) = split_headers(headers.as_deref());
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
    whole(message_from_row(r)?)
}

/// A list as the JSON text `JSON_TABLE` reads.
pub(super) fn json(value: &serde_json::Value) -> String {
    value.to_string()
}
