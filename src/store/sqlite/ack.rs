//! Acknowledging a batch under its fenced leases: published, retried and
//! dead-lettered messages, the keys they block and unblock, and the per-key
//! sequence numbers, all in one transaction.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::decode::{json, micros};
use super::SqliteOutbox;
use crate::error::Result;
use crate::store::{sleep_horizon, AckBatch, AckPlan, AckReport, Lease};

pub(super) async fn ack(outbox: &SqliteOutbox, p: AckBatch<'_>) -> Result<AckReport> {
    if p.acks.is_empty() {
        return Ok(AckReport::default());
    }
    let (relay, acks, retain, now) = (p.relay, p.acks, p.retain, p.now);
    let wanted: HashSet<i32> = acks.iter().map(|a| a.bucket).collect();
    let held: Vec<&Lease> = p
        .leases
        .iter()
        .filter(|l| wanted.contains(&l.bucket))
        .collect();
    if held.is_empty() {
        return Ok(AckReport {
            applied: 0,
            fenced: acks.len(),
            fenced_buckets: wanted.into_iter().collect(),
        });
    }
    let relay = relay.as_bytes().to_vec();
    let sql = &outbox.inner.sql;
    let mut tx = outbox.inner.pool.begin().await?;
    // The fence is the transaction's first statement and a write, so the
    // write lock is held from here and no other relay can take the lease
    // before the commit.
    let mut valid = HashSet::new();
    for l in held {
        let done = sqlx::query(&sql.fence)
            .bind(l.bucket)
            .bind(&relay)
            .bind(l.epoch)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() > 0 {
            valid.insert(l.bucket);
        }
    }
    let plan = AckPlan::new(acks, |b| valid.contains(&b));
    let report = plan.report.clone();
    let published = &plan.published;
    let pairs = |v: &[(&str, i64)]| serde_json::json!(v);
    let key_seqs = &plan.key_sequences;
    let unblock = &plan.unblock;
    let block = &plan.block;
    let retry: Vec<serde_json::Value> = plan
        .retry
        .iter()
        .map(|(seq, attempts, at, error)| serde_json::json!([seq, attempts, micros(*at), error]))
        .collect();
    if report.applied == 0 {
        tx.rollback().await?;
        return Ok(report);
    }
    if !published.is_empty() {
        let seqs = json(&serde_json::json!(published));
        if retain {
            run(&mut tx, &sql.copy_published, Some(now), &seqs).await?;
        }
        run(&mut tx, &sql.delete_seqs, None, &seqs).await?;
    }
    if !key_seqs.is_empty() {
        let numbers = json(&pairs(key_seqs));
        run(&mut tx, &sql.key_seq_upsert, Some(now), &numbers).await?;
    }
    if !unblock.is_empty() {
        let lifted = json(&pairs(unblock));
        run(&mut tx, &sql.unblock, None, &lifted).await?;
        run(&mut tx, &sql.unpark, None, &lifted).await?;
    }
    if !retry.is_empty() {
        sqlx::query(&sql.retry)
            .bind(json(&serde_json::Value::Array(retry)))
            .bind(micros(sleep_horizon(now)))
            .execute(&mut *tx)
            .await?;
    }
    if !plan.dead.is_empty() {
        let (rows, positions) = plan.dead_rows();
        run(&mut tx, &sql.copy_dead, Some(Utc::now()), &json(&rows)).await?;
        let positions = json(&serde_json::json!(positions));
        run(&mut tx, &sql.delete_seqs, None, &positions).await?;
    }
    if !block.is_empty() {
        run(&mut tx, &sql.block, Some(now), &json(&pairs(block))).await?;
    }
    tx.commit().await?;
    Ok(report)
}

/// Runs a statement of the acknowledgement that takes a time first where
/// `at` is given, then a list as JSON.
async fn run(
    tx: &mut SqliteConnection,
    statement: &str,
    at: Option<DateTime<Utc>>,
    list: &str,
) -> Result<()> {
    let mut q = sqlx::query(statement);
    if let Some(at) = at {
        q = q.bind(micros(at));
    }
    q.bind(list).execute(tx).await?;
    Ok(())
}
