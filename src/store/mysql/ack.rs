//! Acknowledging a batch under its fenced leases: published, retried and
//! dead-lettered messages, the keys they block and unblock, and the per-key
//! sequence numbers, all in one `READ COMMITTED` transaction that writes
//! by primary key.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::decode::{json, json_time};
use super::statements::{with_list, with_pairs};
use super::{begin_read_committed, MySqlOutbox};
use crate::error::{Error, Result};
use crate::store::{sleep_horizon, AckBatch, AckPlan, AckReport};

/// Acknowledges `p`, running the transaction again when InnoDB rolled it
/// back to break a deadlock (error 1213): with other relays' fences,
/// acknowledgements and lease moves, and producers' inserts next to the
/// same index gaps (`store::deadlock`).
pub(super) async fn ack(outbox: &MySqlOutbox, p: AckBatch<'_>) -> Result<AckReport> {
    crate::store::deadlock::retried(deadlocked, || ack_once(outbox, p)).await
}

/// Whether `e` is InnoDB's deadlock error, after which it has rolled the
/// whole transaction back.
fn deadlocked(e: &Error) -> bool {
    match e {
        Error::Database(sqlx::Error::Database(d)) => d
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|d| d.number() == 1213),
        _ => false,
    }
}

async fn ack_once(outbox: &MySqlOutbox, p: AckBatch<'_>) -> Result<AckReport> {
    if p.acks.is_empty() {
        return Ok(AckReport::default());
    }
    let (relay, acks, retain, now) = (p.relay, p.acks, p.retain, p.now);
    let sql = &outbox.inner.sql;
    let mut tx = begin_read_committed(outbox.relay_pool()).await?;
    // The fence: the relay's leases, locked in share mode until the
    // commit, so none changes hands before then; a bucket counts only
    // with the epoch the relay holds.
    let text = with_list(&sql.fence, p.leases.len());
    let mut q = sqlx::query(&text);
    if p.leases.is_empty() {
        q = q.bind(-1i32);
    }
    for l in p.leases {
        q = q.bind(l.bucket);
    }
    let rows = q
        .bind(relay.as_bytes().to_vec())
        .persistent(false)
        .fetch_all(&mut *tx)
        .await?;
    let mut locked = HashSet::new();
    for r in &rows {
        let bucket: i32 = r.try_get(0)?;
        let epoch: i64 = r.try_get(1)?;
        locked.insert((bucket, epoch));
    }
    let valid: HashSet<i32> = p
        .leases
        .iter()
        .filter(|l| locked.contains(&(l.bucket, l.epoch)))
        .map(|l| l.bucket)
        .collect();
    let plan = AckPlan::new(acks, |b| valid.contains(&b));
    let report = plan.report.clone();
    if report.applied == 0 {
        tx.rollback().await?;
        return Ok(report);
    }
    if !plan.published.is_empty() {
        let seqs = &plan.published;
        if retain {
            let text = with_list(&sql.copy_published, seqs.len());
            let mut q = sqlx::query(&text).bind(now);
            for s in seqs {
                q = q.bind(*s);
            }
            q.persistent(false).execute(&mut *tx).await?;
        }
        delete(&mut tx, &sql.delete_seqs, seqs).await?;
    }
    if !plan.key_sequences.is_empty() {
        upsert(&mut tx, &sql.key_seq_upsert, now, &plan.key_sequences).await?;
    }
    if !plan.unblock.is_empty() {
        let text = with_pairs(&sql.unblock, plan.unblock.len());
        let mut q = sqlx::query(&text);
        for (k, seq) in &plan.unblock {
            q = q.bind(*k).bind(*seq);
        }
        q.persistent(false).execute(&mut *tx).await?;
        let keys: Vec<&str> = plan.unblock.iter().map(|(k, _)| *k).collect();
        let text = with_list(&sql.unpark, keys.len());
        let mut q = sqlx::query(&text);
        for k in keys {
            q = q.bind(k);
        }
        q.persistent(false).execute(&mut *tx).await?;
    }
    if !plan.retry.is_empty() {
        let retry: Vec<serde_json::Value> = plan
            .retry
            .iter()
            .map(|(seq, attempts, at, error)| {
                serde_json::json!([seq, attempts, json_time(*at), error])
            })
            .collect();
        let text = with_list(&sql.retry, plan.retry.len());
        let mut q = sqlx::query(&text)
            .bind(json(&serde_json::Value::Array(retry)))
            .bind(sleep_horizon(now));
        for r in &plan.retry {
            q = q.bind(r.0);
        }
        q.persistent(false).execute(&mut *tx).await?;
    }
    if !plan.dead.is_empty() {
        let (dead, dead_seqs) = plan.dead_rows();
        let text = with_list(&sql.copy_dead, dead_seqs.len());
        let mut q = sqlx::query(&text).bind(Utc::now()).bind(json(&dead));
        for s in &dead_seqs {
            q = q.bind(*s);
        }
        q.persistent(false).execute(&mut *tx).await?;
        delete(&mut tx, &sql.delete_seqs, &dead_seqs).await?;
    }
    if !plan.block.is_empty() {
        upsert(&mut tx, &sql.block, now, &plan.block).await?;
    }
    tx.commit().await?;
    Ok(report)
}

/// Deletes the messages at `seqs` (see `delete_seqs.sql`).
async fn delete(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    statement: &str,
    seqs: &[i64],
) -> Result<()> {
    let text = with_list(statement, seqs.len());
    let mut q = sqlx::query(&text);
    for s in seqs {
        q = q.bind(*s);
    }
    q.persistent(false).execute(&mut **tx).await?;
    Ok(())
}

/// Upserts (key, number) pairs stamped `now` (see `key_seq_upsert.sql`
/// and `block.sql`), the pairs as JSON.
async fn upsert(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    statement: &str,
    now: DateTime<Utc>,
    pairs: &[(&str, i64)],
) -> Result<()> {
    sqlx::query(statement)
        .bind(now)
        .bind(json(&serde_json::json!(pairs)))
        .execute(&mut **tx)
        .await?;
    Ok(())
}
