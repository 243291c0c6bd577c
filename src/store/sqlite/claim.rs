//! Claiming the next messages due, and now and then sweeping away key
//! blocks whose message is gone (see `BlockSweep`).

use super::decode::{message_from_row, micros};
use super::{SqliteOutbox, BUCKET};
use crate::error::Result;
use sqlx::Row;

use crate::store::{Claim, Claimed, ClaimedBatch};

pub(super) async fn claim(outbox: &SqliteOutbox, p: Claim<'_>) -> Result<ClaimedBatch> {
    let Claim {
        buckets,
        now,
        limit,
        exclude,
        max_bytes,
        bucket_count,
    } = p;
    // Every message is in the one bucket, the count this store reports.
    debug_assert_eq!(bucket_count, 1, "SQLite outboxes have one bucket");
    if buckets.is_some_and(|b| !b.contains(&BUCKET)) {
        return Ok(ClaimedBatch::default());
    }
    // Positions as a JSON array: SQLite has no array parameters.
    let mut excluded = String::with_capacity(exclude.len() * 8 + 2);
    excluded.push('[');
    for (i, seq) in exclude.iter().enumerate() {
        if i > 0 {
            excluded.push(',');
        }
        excluded.push_str(&seq.to_string());
    }
    excluded.push(']');
    if outbox.inner.sweep.due() {
        sqlx::query(&outbox.inner.sql.sweep_gone_blocks)
            .execute(&outbox.inner.pool)
            .await?;
    }
    let rows = sqlx::query(&outbox.inner.sql.claim)
        .bind(micros(now))
        .bind(excluded)
        .bind(limit)
        .bind(max_bytes)
        .fetch_all(&outbox.inner.pool)
        .await?;
    let cut: bool = match rows.last() {
        Some(r) => r.try_get("followed")?,
        None => false,
    };
    let messages = rows
        .iter()
        .map(|r| {
            let (message, undecodable) = message_from_row(r)?;
            Ok(Claimed {
                message,
                bucket: BUCKET,
                undecodable,
            })
        })
        .collect::<Result<_>>()?;
    Ok(ClaimedBatch::new(messages, cut, limit))
}
