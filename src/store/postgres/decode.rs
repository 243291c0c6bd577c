//! Rows into the crate's types, by column index: a claim decodes a thousand
//! rows, and name lookups were a visible share of it. Each statement that
//! is read here starts with the message columns, in this order: `seq, id,
//! topic, partition_key, event_type, schema_version, payload, content_type,
//! headers, created_at, attempts`.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::error::Result;
use crate::message::{MessageId, OutboxMessage};
pub(super) use crate::store::decode::{leases_from_rows, split_headers, whole};
use crate::store::{Claimed, ClaimedBatch, DeadLetter, StoreStats};

/// Index of `headers::text` in a claim (`claim.sql`),
/// where it replaces the JSON column.
const CLAIM_HEADERS: usize = 8;
/// Index of the bucket in a claim.
const CLAIM_BUCKET: usize = 11;
/// Index of whether a claim's scan read a row after this one.
const CLAIM_FOLLOWED: usize = 14;
/// Index of `headers::text` in `published.sql`.
const PUBLISHED_HEADERS: usize = 11;
/// Index of `headers::text` in `dead_letters_matching.sql`.
const DEAD_HEADERS: usize = 13;

/// Decodes a row that starts with the message columns in their order, with
/// the headers as text in column `headers_col`.
///
/// Headers that do not decode are left empty and the reason returned
/// beside the message: the relay dead-letters such a row, an operator's
/// listing shows it.
fn message_from_row(r: &PgRow, headers_col: usize) -> Result<(OutboxMessage, Option<String>)> {
    let headers: Option<&str> = r.try_get(headers_col)?;
    let (headers, bad) = split_headers(headers);
    let attempts: i32 = r.try_get(10)?;
    let message = OutboxMessage {
        seq: r.try_get(0)?,
        id: MessageId::from_uuid(r.try_get(1)?),
        topic: r.try_get(2)?,
        partition_key: r.try_get(3)?,
        event_type: r.try_get(4)?,
        schema_version: r.try_get(5)?,
        payload: r.try_get(6)?,
        content_type: r.try_get(7)?,
        headers,
        created_at: r.try_get(9)?,
        attempt: attempts + 1,
        key_sequence: None,
    };
    Ok((message, bad))
}

/// A row of a claim.
/// The rows of `claim.sql`, under a claim of at most `limit`.
pub(super) fn claimed_batch(rows: &[PgRow], limit: i64) -> Result<ClaimedBatch> {
    let cut = match rows.last() {
        Some(r) => r.try_get(CLAIM_FOLLOWED)?,
        None => false,
    };
    let messages = rows.iter().map(claimed_from_row).collect::<Result<_>>()?;
    Ok(ClaimedBatch::new(messages, cut, limit))
}

fn claimed_from_row(r: &PgRow) -> Result<Claimed> {
    let (message, undecodable) = message_from_row(r, CLAIM_HEADERS)?;
    Ok(Claimed {
        message,
        bucket: r.try_get(CLAIM_BUCKET)?,
        undecodable,
    })
}

/// A row of `published.sql`.
pub(super) fn published_from_row(r: &PgRow) -> Result<OutboxMessage> {
    whole(message_from_row(r, PUBLISHED_HEADERS)?)
}

/// A row of `dead_letters_matching.sql`.
///
/// A dead letter whose headers do not decode is listed without them: it was
/// dead-lettered for that reason, which its last error says.
pub(super) fn dead_letter_from_row(r: &PgRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        message: message_from_row(r, DEAD_HEADERS)?.0,
        attempts: r.try_get("attempts")?,
        last_error: r.try_get("last_error")?,
        dead_at: r.try_get("dead_at")?,
    })
}

/// The row of `stats.sql`. Ages come in seconds; one below zero (a
/// transaction begun after the statement read its clock) counts as zero.
pub(super) fn stats_from_row(row: &PgRow) -> Result<StoreStats> {
    let seconds = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let age: Option<f64> = row.try_get(1)?;
    let xmin_age: Option<f64> = row.try_get(4)?;
    Ok(StoreStats {
        dead_tuples: row.try_get(3)?,
        oldest_xmin_age: xmin_age.map(seconds),
        autovacuum: row.try_get(5)?,
        table_bytes: row.try_get(8)?,
        last_position: row.try_get(9)?,
        ..StoreStats::counted(
            row.try_get(0)?,
            row.try_get(6)?,
            row.try_get(7)?,
            age.map(seconds),
            row.try_get(2)?,
        )
    })
}
