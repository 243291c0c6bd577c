//! The operations the relay runs on this backend. Leases, claims and
//! acknowledgements live in their own files; the small operations are here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::Row;
use tokio::sync::Notify;
use uuid::Uuid;

use super::decode::{json, micros};
use super::{ack, claim, leases, migrate, SqliteOutbox};
use crate::error::Result;
use crate::store::sealed::StoreOps;
use crate::store::{
    AckBatch, AckReport, Acquire, Claim, ClaimedBatch, Heartbeat, Lease, Park, Purge, Release,
    Renew, Store, StoreStats, WakeSource,
};

impl Store for SqliteOutbox {}

#[async_trait]
impl StoreOps for SqliteOutbox {
    async fn check_schema(&self) -> Result<()> {
        migrate::check_schema(self).await
    }

    async fn bucket_count(&self) -> Result<i32> {
        leases::bucket_count(self).await
    }

    async fn heartbeat(&self, p: Heartbeat) -> Result<usize> {
        leases::heartbeat(self, p).await
    }

    async fn renew(&self, p: Renew<'_>) -> Result<Vec<Lease>> {
        leases::renew(self, p).await
    }

    async fn acquire(&self, p: Acquire) -> Result<Vec<Lease>> {
        leases::acquire(self, p).await
    }

    async fn release(&self, p: Release<'_>) -> Result<()> {
        leases::release(self, p).await
    }

    async fn leave(&self, relay: Uuid) -> Result<()> {
        leases::leave(self, relay).await
    }

    async fn claim(&self, p: Claim<'_>) -> Result<ClaimedBatch> {
        claim::claim(self, p).await
    }

    async fn ack(&self, p: AckBatch<'_>) -> Result<AckReport> {
        ack::ack(self, p).await
    }

    async fn key_sequences(&self, keys: &[String]) -> Result<HashMap<String, i64>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(&self.inner.sql.key_seq_read)
            .bind(json(&serde_json::json!(keys)))
            .fetch_all(&self.inner.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    async fn purge_published(&self, p: Purge) -> Result<u64> {
        let Purge { before, limit } = p;
        Ok(sqlx::query(&self.inner.sql.purge)
            .bind(micros(before))
            .bind(limit)
            .execute(&self.inner.pool)
            .await?
            .rows_affected())
    }

    async fn stats(&self) -> Result<StoreStats> {
        let now = micros(Utc::now());
        let row = sqlx::query(&self.inner.sql.stats)
            .bind(now)
            .fetch_one(&self.inner.pool)
            .await?;
        let oldest: Option<i64> = row.try_get(1)?;
        let pending: i64 = row.try_get(0)?;
        let retry_waiting: i64 = row.try_get(3)?;
        let parked: i64 = row.try_get(4)?;
        Ok(StoreStats {
            pending,
            ready: (pending - retry_waiting - parked).max(0),
            retry_waiting,
            parked,
            oldest_pending_age: oldest
                .map(|t| Duration::from_micros(u64::try_from(now.saturating_sub(t)).unwrap_or(0))),
            dead_letters: row.try_get(2)?,
            dead_tuples: None,
            oldest_xmin_age: None,
            autovacuum: None,
            table_bytes: None,
        })
    }

    async fn topic_stats(&self) -> Result<Vec<crate::store::TopicStats>> {
        crate::store::admin::AdminOps::select_topics(self).await
    }

    async fn vacuum(&self) -> Result<()> {
        Ok(())
    }

    async fn park(&self, p: Park) -> Result<u64> {
        let pool = &self.inner.pool;
        if let Some(wake_by) = p.wake_by {
            sqlx::query(&self.inner.sql.wake_sleeping)
                .bind(micros(wake_by))
                .execute(pool)
                .await?;
            sqlx::query(&self.inner.sql.unpark_lifted)
                .execute(pool)
                .await?;
        }
        let parked = sqlx::query(&self.inner.sql.park)
            .bind(p.limit)
            .execute(pool)
            .await?;
        Ok(parked.rows_affected())
    }

    fn local_signal(&self) -> Arc<Notify> {
        self.inner.signal.clone()
    }

    async fn listen(&self) -> Result<Option<Box<dyn WakeSource>>> {
        Ok(None)
    }
}
