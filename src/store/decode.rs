//! Row decoding every backend shares: decode errors, ids stored as bytes,
//! message headers, and lease rows.

use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::error::{Error, Result};
use crate::message::{Headers, OutboxMessage};
use crate::store::Lease;

/// A value the database returned that the crate cannot read.
pub(crate) fn decode_error(msg: String) -> Error {
    Error::Database(sqlx::Error::Decode(msg.into()))
}

/// A message id stored as 16 bytes.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn uuid_from_bytes(b: &[u8]) -> Result<uuid::Uuid> {
    uuid::Uuid::from_slice(b).map_err(|e| decode_error(format!("invalid message id: {e}")))
}

/// A message's stored headers. Headers that do not decode are left empty
/// and the reason returned beside them: the relay dead-letters such a row,
/// an operator's listing shows it.
pub(crate) fn split_headers(json: Option<&str>) -> (Headers, Option<String>) {
    match OutboxMessage::headers_from_json(json) {
        Ok(h) => (h, None),
        Err(e) => (Headers::new(), Some(e)),
    }
}

/// A decoded message that must be whole (retained published messages):
/// headers that did not decode are an error here.
pub(crate) fn whole(decoded: (OutboxMessage, Option<String>)) -> Result<OutboxMessage> {
    match decoded {
        (message, None) => Ok(message),
        (message, Some(bad)) => Err(decode_error(format!("message {}: {bad}", message.id()))),
    }
}

/// The rows of a lease statement (renew, acquire): bucket, epoch.
pub(crate) fn leases_from_rows<R>(rows: &[R]) -> Result<Vec<Lease>>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            Ok(Lease {
                bucket: r.try_get(0)?,
                epoch: r.try_get(1)?,
            })
        })
        .collect()
}
