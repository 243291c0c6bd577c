//! Rows into the crate's types, by column index: a claim decodes a thousand
//! rows, and name lookups were a visible share of it. Each statement that
//! is read here starts with the message columns, in this order: `seq, id,
//! topic, partition_key, event_type, schema_version, payload, content_type,
//! headers, created_at, attempts`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgRow, Postgres};
use sqlx::Row;

use crate::error::Result;
use crate::message::{MessageId, OutboxMessage};
pub(super) use crate::store::decode::{leases_from_rows, split_headers, whole};
use crate::store::{Claimed, ClaimedBatch, DeadLetter, StoreStats, TopicStats};

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

/// Column `i` of `r`, its type checked against `T` only with `check`. The
/// rows of one result share their columns' types, so a result of many
/// rows is checked on its first (a mismatch is still a typed error, before
/// anything is decoded) and decoded unchecked after it: the check built
/// and compared the compatible types for each text column of each row, a
/// visible share of decoding a claim or an export page.
pub(crate) fn column<'r, T>(r: &'r PgRow, i: usize, check: bool) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    Ok(if check {
        r.try_get(i)?
    } else {
        r.try_get_unchecked(i)?
    })
}

/// Decodes a row that starts with the message columns in their order, with
/// the headers as text in column `headers_col`; types checked with `check`
/// (see [`column`]).
///
/// Headers that do not decode are left empty and the reason returned
/// beside the message: the relay dead-letters such a row, an operator's
/// listing shows it.
fn message_from_row(
    r: &PgRow,
    headers_col: usize,
    check: bool,
) -> Result<(OutboxMessage, Option<String>)> {
    let headers: Option<&str> = column(r, headers_col, check)?;
    let (headers, bad) = split_headers(headers);
    let attempts: i32 = column(r, 10, check)?;
    let message = OutboxMessage {
        seq: column(r, 0, check)?,
        id: MessageId::from_uuid(column(r, 1, check)?),
        topic: column(r, 2, check)?,
        partition_key: column(r, 3, check)?,
        event_type: column(r, 4, check)?,
        schema_version: column(r, 5, check)?,
        payload: column(r, 6, check)?,
        content_type: column(r, 7, check)?,
        headers,
        created_at: column(r, 9, check)?,
        attempt: attempts + 1,
        key_sequence: None,
    };
    Ok((message, bad))
}

/// The rows of `claim.sql`, under a claim of at most `limit`.
pub(super) fn claimed_batch(rows: &[PgRow], limit: i64) -> Result<ClaimedBatch> {
    let cut = match rows.last() {
        Some(r) => r.try_get(CLAIM_FOLLOWED)?,
        None => false,
    };
    let messages = rows
        .iter()
        .enumerate()
        .map(|(i, r)| claimed_from_row(r, i == 0))
        .collect::<Result<_>>()?;
    Ok(ClaimedBatch::new(messages, cut, limit))
}

/// A row of a claim.
fn claimed_from_row(r: &PgRow, check: bool) -> Result<Claimed> {
    let (message, undecodable) = message_from_row(r, CLAIM_HEADERS, check)?;
    Ok(Claimed {
        message,
        bucket: column(r, CLAIM_BUCKET, check)?,
        undecodable,
    })
}

/// A row of `published.sql`.
pub(super) fn published_from_row(r: &PgRow) -> Result<OutboxMessage> {
    whole(message_from_row(r, PUBLISHED_HEADERS, true)?)
}

/// A row of `dead_letters_matching.sql`.
///
/// A dead letter whose headers do not decode is listed without them: it was
/// dead-lettered for that reason, which its last error says.
pub(super) fn dead_letter_from_row(r: &PgRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        message: message_from_row(r, DEAD_HEADERS, true)?.0,
        attempts: r.try_get("attempts")?,
        last_error: r.try_get("last_error")?,
        dead_at: r.try_get("dead_at")?,
    })
}

/// A row of `topic_stats.sql`: topic, pending, oldest's creation time,
/// its age in seconds, retries not due, held back behind a blocked key.
pub(super) type TopicCount = (String, i64, DateTime<Utc>, f64, i64, i64);

/// Seconds as a duration; below zero (a transaction begun after the
/// statement read its clock) counts as zero.
fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// The row of `stats.sql` and the topics' counts of `topic_stats.sql`,
/// summed.
pub(super) fn stats_from_row(row: &PgRow, topics: &[TopicCount]) -> Result<StoreStats> {
    let xmin_age: Option<f64> = row.try_get(2)?;
    let sum = |f: fn(&TopicCount) -> i64| topics.iter().map(f).sum::<i64>();
    let age = topics.iter().map(|t| t.3).reduce(f64::max);
    Ok(StoreStats {
        dead_tuples: row.try_get(1)?,
        oldest_xmin_age: xmin_age.map(seconds),
        autovacuum: row.try_get(3)?,
        table_bytes: row.try_get(4)?,
        last_position: row.try_get(5)?,
        ..StoreStats::counted(
            sum(|t| t.1),
            sum(|t| t.4),
            sum(|t| t.5),
            age.map(seconds),
            row.try_get(0)?,
        )
    })
}

/// The topics' counts as the gauges per topic read them.
pub(super) fn topics_from_counts(counts: Vec<TopicCount>) -> Vec<TopicStats> {
    counts
        .into_iter()
        .map(|(topic, pending, oldest_created_at, ..)| TopicStats {
            topic,
            pending,
            oldest_created_at,
        })
        .collect()
}
