//! The operations the relay runs on PostgreSQL: leases, claims, key
//! sequences and maintenance. Acknowledgements are in `ack.rs`, the wake
//! source in `wake.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Executor;
use tokio::sync::Notify;
use uuid::Uuid;

use super::decode::{claimed_from_row, leases_from_rows, stats_from_row};
use super::PgOutbox;
use crate::error::Result;
use crate::store::sealed::StoreOps;
use crate::store::{
    AckBatch, AckReport, Acquire, Claim, Claimed, Heartbeat, Lease, Purge, Release, Renew, Store,
    StoreStats, WakeSource,
};

impl Store for PgOutbox {}

#[async_trait]
impl StoreOps for PgOutbox {
    async fn check_schema(&self) -> Result<()> {
        self.check_schema_is_known().await
    }

    async fn bucket_count(&self) -> Result<i32> {
        Ok(sqlx::query_scalar(&self.inner.sql.bucket_count)
            .fetch_one(&self.inner.pool)
            .await?)
    }

    async fn heartbeat(&self, p: Heartbeat) -> Result<usize> {
        let Heartbeat { relay, ttl } = p;
        let n: i64 = sqlx::query_scalar(&self.inner.sql.heartbeat)
            .bind(relay)
            .bind(secs(ttl))
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(n.max(1) as usize)
    }

    async fn renew(&self, p: Renew<'_>) -> Result<Vec<Lease>> {
        let Renew { relay, leases, ttl } = p;
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let (b, e) = lease_arrays(leases);
        let rows = sqlx::query(&self.inner.sql.renew)
            .bind(relay)
            .bind(secs(ttl))
            .bind(b)
            .bind(e)
            .fetch_all(&self.inner.pool)
            .await?;
        leases_from_rows(rows)
    }

    async fn acquire(&self, p: Acquire) -> Result<Vec<Lease>> {
        let Acquire { relay, max, ttl } = p;
        if max == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&self.inner.sql.acquire)
            .bind(relay)
            .bind(secs(ttl))
            .bind(max as i64)
            .fetch_all(&self.inner.pool)
            .await?;
        leases_from_rows(rows)
    }

    async fn release(&self, p: Release<'_>) -> Result<()> {
        let Release { relay, leases } = p;
        if leases.is_empty() {
            return Ok(());
        }
        let (b, e) = lease_arrays(leases);
        sqlx::query(&self.inner.sql.release)
            .bind(relay)
            .bind(b)
            .bind(e)
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    async fn leave(&self, relay: Uuid) -> Result<()> {
        sqlx::query(&self.inner.sql.leave)
            .bind(relay)
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    async fn claim(&self, p: Claim<'_>) -> Result<Vec<Claimed>> {
        let Claim {
            buckets,
            bucket_count,
            now,
            limit,
            exclude,
        } = p;
        let q = match buckets {
            None => sqlx::query(&self.inner.sql.claim_all)
                .bind(now)
                .bind(bucket_count)
                .bind(limit)
                .bind(exclude),
            Some(b) => sqlx::query(&self.inner.sql.claim_buckets)
                .bind(now)
                .bind(bucket_count)
                .bind(limit)
                .bind(exclude)
                .bind(b),
        };
        if self.inner.pool.is_closed() {
            // The application closed its pool: close ours with it.
            self.inner.claim_pool.close().await;
            return Err(sqlx::Error::PoolClosed.into());
        }
        let rows = q
            .fetch_all(self.inner.claim_pool.get(&self.inner.pool))
            .await?;
        rows.iter().map(claimed_from_row).collect()
    }

    async fn ack(&self, p: AckBatch<'_>) -> Result<AckReport> {
        self.apply_acks(p).await
    }

    async fn key_sequences(&self, keys: &[String]) -> Result<HashMap<String, i64>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(&self.inner.sql.key_seq_read)
            .bind(keys)
            .fetch_all(&self.inner.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    async fn purge_published(&self, p: Purge) -> Result<u64> {
        let Purge { before, limit } = p;
        Ok(sqlx::query(&self.inner.sql.purge)
            .bind(before)
            .bind(limit)
            .execute(&self.inner.pool)
            .await?
            .rows_affected())
    }

    async fn stats(&self) -> Result<StoreStats> {
        let messages = self.inner.names.messages.clone();
        let row = sqlx::query(&self.inner.sql.stats)
            .bind(messages)
            .fetch_one(&self.inner.pool)
            .await?;
        stats_from_row(&row)
    }

    async fn vacuum(&self) -> Result<()> {
        // Not in a transaction (VACUUM refuses one); SKIP_LOCKED so it never
        // waits behind a lock.
        self.inner
            .pool
            .execute(self.inner.sql.vacuum.as_str())
            .await?;
        Ok(())
    }

    fn local_signal(&self) -> Arc<Notify> {
        self.inner.wake.signal.clone()
    }

    async fn listen(&self) -> Result<Option<Box<dyn WakeSource>>> {
        self.listen_source().await
    }
}

/// A time to live as the seconds `make_interval` takes.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Leases as the two arrays the lease statements unnest.
pub(super) fn lease_arrays(leases: &[Lease]) -> (Vec<i32>, Vec<i64>) {
    leases.iter().map(|l| (l.bucket, l.epoch)).unzip()
}
