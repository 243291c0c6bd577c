//! Claiming the next messages due, and now and then sweeping away key
//! blocks whose message is gone (see `BlockSweep`).

use sqlx::Row;

use super::decode::message_from_row;
use super::statements::{with_list, with_pairs};
use super::{execute_read_committed, MySqlOutbox};
use crate::error::{Error, Result};
use crate::store::{Claim, Claimed, ClaimedBatch};

/// The most buckets a claim's mask can name.
const MAX_BUCKETS: i32 = 64;

/// Most positions in flight a claim leaves out: MySQL binds at most 65,535
/// parameters in a statement, and the claim has a few of its own.
const MAX_EXCLUDED: usize = 65_000;

pub(super) async fn claim(outbox: &MySqlOutbox, p: Claim<'_>) -> Result<ClaimedBatch> {
    let (bucket_count, exclude) = (p.bucket_count, p.exclude);
    if !(1..=MAX_BUCKETS).contains(&bucket_count) {
        return Err(Error::InvalidConfig {
            field: "bucket count",
            reason: format!("must be between 1 and {MAX_BUCKETS} on MySQL, not {bucket_count}"),
        });
    }
    let mask: u64 = match p.buckets {
        None => u64::MAX,
        Some(b) => b
            .iter()
            .filter(|b| (0..MAX_BUCKETS).contains(*b))
            .fold(0, |m, b| m | (1u64 << b)),
    };
    if mask == 0 {
        return Ok(ClaimedBatch::default());
    }
    if exclude.len() > MAX_EXCLUDED {
        // More positions in flight than one statement can bind (a relay's
        // early claim over two very large batches): nothing now, and more
        // to come, so the relay claims again once they have landed.
        return Ok(ClaimedBatch {
            messages: Vec::new(),
            more: true,
        });
    }
    let pool = outbox.relay_pool();
    if outbox.inner.sweep.due() {
        sweep_gone_blocks(outbox).await?;
    }
    // The text depends on the number of positions in flight: kept in the
    // statement cache only without any.
    let text = with_list(&outbox.inner.sql.claim, exclude.len());
    let mut q = sqlx::query(&text)
        .bind(bucket_count)
        .bind(bucket_count)
        .bind(p.now);
    if exclude.is_empty() {
        q = q.bind(-1i64);
    }
    for s in exclude {
        q = q.bind(*s);
    }
    let rows = q
        .bind(mask)
        .bind(p.limit)
        .bind(p.max_bytes)
        .persistent(exclude.is_empty())
        .fetch_all(pool)
        .await?;
    let cut = match rows.last() {
        Some(r) => r.try_get::<i64, _>("followed")? != 0,
        None => false,
    };
    let messages = rows
        .iter()
        .map(|r| {
            let (message, undecodable) = message_from_row(r)?;
            let bucket: i64 = r.try_get("bucket")?;
            Ok(Claimed {
                message,
                bucket: bucket as i32,
                undecodable,
            })
        })
        .collect::<Result<_>>()?;
    Ok(ClaimedBatch::new(messages, cut, p.limit))
}

/// Deletes the key blocks whose message is gone: read without locking,
/// then deleted by primary key, so the sweep locks no message row and
/// waits for no transaction but one holding those blocks.
async fn sweep_gone_blocks(outbox: &MySqlOutbox) -> Result<()> {
    let pool = outbox.relay_pool();
    let sql = &outbox.inner.sql;
    let gone: Vec<(Vec<u8>, i64)> = sqlx::query_as(&sql.sweep_gone_blocks)
        .fetch_all(pool)
        .await?;
    if gone.is_empty() {
        return Ok(());
    }
    let text = with_pairs(&sql.unblock, gone.len());
    let mut q = sqlx::query(&text);
    for (key, seq) in gone {
        q = q.bind(key).bind(seq);
    }
    execute_read_committed(pool, q.persistent(false)).await?;
    Ok(())
}
