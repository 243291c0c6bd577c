//! Acknowledging a batch under its fenced leases: published, retried and
//! dead-lettered messages, the keys they block and unblock, and the per-key
//! sequence numbers, all in one transaction.

use std::collections::HashSet;

use chrono::Utc;

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
    let dead: Vec<serde_json::Value> = plan
        .dead
        .iter()
        .map(|(seq, attempts, error)| serde_json::json!([seq, attempts, error]))
        .collect();
    let dead_seqs: Vec<i64> = plan.dead.iter().map(|d| d.0).collect();
    if report.applied == 0 {
        tx.rollback().await?;
        return Ok(report);
    }
    if !published.is_empty() {
        let seqs = json(&serde_json::json!(published));
        if retain {
            sqlx::query(&sql.copy_published)
                .bind(micros(now))
                .bind(&seqs)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(&sql.delete_seqs)
            .bind(&seqs)
            .execute(&mut *tx)
            .await?;
    }
    if !key_seqs.is_empty() {
        sqlx::query(&sql.key_seq_upsert)
            .bind(micros(now))
            .bind(json(&pairs(key_seqs)))
            .execute(&mut *tx)
            .await?;
    }
    if !unblock.is_empty() {
        let lifted = json(&pairs(unblock));
        sqlx::query(&sql.unblock)
            .bind(&lifted)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&sql.unpark)
            .bind(lifted)
            .execute(&mut *tx)
            .await?;
    }
    if !retry.is_empty() {
        sqlx::query(&sql.retry)
            .bind(json(&serde_json::Value::Array(retry)))
            .bind(micros(sleep_horizon(now)))
            .execute(&mut *tx)
            .await?;
    }
    if !dead.is_empty() {
        sqlx::query(&sql.copy_dead)
            .bind(micros(Utc::now()))
            .bind(json(&serde_json::Value::Array(dead)))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&sql.delete_seqs)
            .bind(json(&serde_json::json!(dead_seqs)))
            .execute(&mut *tx)
            .await?;
    }
    if !block.is_empty() {
        sqlx::query(&sql.block)
            .bind(micros(now))
            .bind(json(&pairs(block)))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(report)
}
