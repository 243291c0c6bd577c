//! Acknowledgements: what the relay decided for each claimed message,
//! written only in the buckets whose lease the relay still holds (fencing).

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::relay_ops::lease_arrays;
use super::{begin, PgOutbox};
use crate::error::{Error, Result};
use crate::store::{sleep_horizon, AckBatch, AckPlan, AckReport, Disposition};

/// Whether `e` is PostgreSQL's deadlock error (SQLSTATE 40P01), after
/// which it has rolled the whole transaction back. An acknowledgement that
/// lifts a key's block updates the key's parked messages (`unpark.sql`),
/// as the upkeep's `unpark_lifted.sql` does, each in its own order.
pub(super) fn deadlocked(e: &Error) -> bool {
    match e {
        Error::Database(sqlx::Error::Database(d)) => d.code().as_deref() == Some("40P01"),
        _ => false,
    }
}

impl PgOutbox {
    /// Applies acknowledgements, fenced by the leases' epochs, running them
    /// again when PostgreSQL chose them as a deadlock's victim.
    pub(super) async fn apply_acks(&self, p: AckBatch<'_>) -> Result<AckReport> {
        crate::store::deadlock::retried(deadlocked, || self.apply_acks_once(p)).await
    }

    async fn apply_acks_once(&self, p: AckBatch<'_>) -> Result<AckReport> {
        let AckBatch {
            relay,
            leases,
            acks,
            retain,
            now,
        } = p;
        if acks.is_empty() {
            return Ok(AckReport::default());
        }
        let (lb, le) = lease_arrays(leases);
        let simple = acks
            .iter()
            .all(|a| matches!(a.disposition, Disposition::Published) && !a.retried);
        if simple {
            // The common case in one statement: fence and delete (or move)
            // atomically.
            let (seqs, buckets): (Vec<i64>, Vec<i32>) =
                acks.iter().map(|a| (a.seq, a.bucket)).unzip();
            let sql = if retain {
                &self.inner.sql.ack_retain
            } else {
                &self.inner.sql.ack_delete
            };
            let (mut ks_k, mut ks_n, mut ks_b) = (Vec::new(), Vec::new(), Vec::new());
            for a in acks {
                if let (Some(k), Some(n)) = (&a.partition_key, a.key_sequence) {
                    ks_k.push(k.as_str());
                    ks_n.push(n);
                    ks_b.push(a.bucket);
                }
            }
            let mut q = sqlx::query_as::<_, (Vec<i32>, i64)>(sql)
                .persistent(self.named())
                .bind(relay)
                .bind(lb)
                .bind(le)
                .bind(seqs)
                .bind(buckets)
                .bind(ks_k)
                .bind(ks_n)
                .bind(ks_b);
            if retain {
                q = q.bind(now);
            }
            let mut c = self.relay_conn().await?;
            let (valid, _written) = q.fetch_one(c.conn()).await?;
            c.finish().await?;
            // Rows already gone (an operator deleted them) are not fencing.
            let valid: HashSet<i32> = valid.into_iter().collect();
            let mut report = AckReport::default();
            for a in acks {
                if valid.contains(&a.bucket) {
                    report.applied += 1;
                } else {
                    report.fenced += 1;
                    if !report.fenced_buckets.contains(&a.bucket) {
                        report.fenced_buckets.push(a.bucket);
                    }
                }
            }
            return Ok(report);
        }

        let mut tx = begin(self.relay_pool(), None).await?;
        let valid: Vec<i32> = sqlx::query_scalar(&self.inner.sql.fence)
            .persistent(self.named())
            .bind(relay)
            .bind(lb)
            .bind(le)
            .fetch_all(&mut *tx)
            .await?;
        let valid: HashSet<i32> = valid.into_iter().collect();
        let plan = AckPlan::new(acks, |b| valid.contains(&b));
        let published = &plan.published;
        let (ks_k, ks_n): (Vec<&str>, Vec<i64>) = plan.key_sequences.iter().copied().unzip();
        let (unblock_k, unblock_s): (Vec<&str>, Vec<i64>) = plan.unblock.iter().copied().unzip();
        let (block_k, block_s): (Vec<&str>, Vec<i64>) = plan.block.iter().copied().unzip();
        let r_seq: Vec<i64> = plan.retry.iter().map(|r| r.0).collect();
        let r_att: Vec<i32> = plan.retry.iter().map(|r| r.1).collect();
        let r_at: Vec<DateTime<Utc>> = plan.retry.iter().map(|r| r.2).collect();
        let r_err: Vec<&str> = plan.retry.iter().map(|r| r.3).collect();
        let d_seq: Vec<i64> = plan.dead.iter().map(|d| d.0).collect();
        let d_att: Vec<i32> = plan.dead.iter().map(|d| d.1).collect();
        let d_err: Vec<&str> = plan.dead.iter().map(|d| d.2).collect();
        if !published.is_empty() {
            if retain {
                sqlx::query(&self.inner.sql.move_published)
                    .persistent(self.named())
                    .bind(published)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(&self.inner.sql.delete_published)
                    .persistent(self.named())
                    .bind(published)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if !ks_k.is_empty() {
            sqlx::query(&self.inner.sql.key_seq_log)
                .persistent(self.named())
                .bind(ks_k)
                .bind(ks_n)
                .execute(&mut *tx)
                .await?;
        }
        if !unblock_k.is_empty() {
            sqlx::query(&self.inner.sql.unblock)
                .persistent(self.named())
                .bind(&unblock_k)
                .bind(unblock_s)
                .execute(&mut *tx)
                .await?;
            // After the lift, in its transaction: the key's messages move
            // on with it. A parking that raced with the lift (it locks no
            // block) is undone by the next upkeep (unpark_lifted.sql).
            sqlx::query(&self.inner.sql.unpark)
                .persistent(self.named())
                .bind(unblock_k)
                .execute(&mut *tx)
                .await?;
        }
        if !r_seq.is_empty() {
            sqlx::query(&self.inner.sql.retry)
                .persistent(self.named())
                .bind(r_seq)
                .bind(r_att)
                .bind(r_at)
                .bind(r_err)
                .bind(sleep_horizon(now))
                .execute(&mut *tx)
                .await?;
        }
        if !d_seq.is_empty() {
            sqlx::query(&self.inner.sql.dead)
                .persistent(self.named())
                .bind(d_seq)
                .bind(d_att)
                .bind(d_err)
                .execute(&mut *tx)
                .await?;
        }
        if !block_k.is_empty() {
            sqlx::query(&self.inner.sql.block)
                .persistent(self.named())
                .bind(block_k)
                .bind(block_s)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(plan.report)
    }
}
