//! The operations the relay runs on this backend. Leases, claims and
//! acknowledgements live in their own files; the small operations are here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use tokio::sync::Notify;
use uuid::Uuid;

use super::decode::text;
use super::statements::with_list;
use super::{ack, claim, execute_read_committed, leases, migrate, MySqlOutbox};
use crate::error::Result;
use crate::store::sealed::StoreOps;
use crate::store::{
    AckBatch, AckReport, Acquire, Claim, ClaimedBatch, Heartbeat, Lease, Park, Purge, Release,
    Renew, Store, StoreStats, WakeSource,
};

impl Store for MySqlOutbox {}

#[async_trait]
impl StoreOps for MySqlOutbox {
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
        let statement = with_list(&self.inner.sql.key_seq_read, keys.len());
        let mut q = sqlx::query_as::<_, (Vec<u8>, i64)>(&statement);
        for k in keys {
            q = q.bind(k);
        }
        let rows = q.persistent(false).fetch_all(&self.inner.pool).await?;
        rows.into_iter().map(|(k, n)| Ok((text(k)?, n))).collect()
    }

    async fn purge_published(&self, p: Purge) -> Result<u64> {
        let Purge { before, limit } = p;
        let q = sqlx::query(&self.inner.sql.purge).bind(before).bind(limit);
        Ok(execute_read_committed(&self.inner.pool, q)
            .await?
            .rows_affected())
    }

    async fn stats(&self) -> Result<StoreStats> {
        let now = Utc::now();
        let row = sqlx::query(&self.inner.sql.stats)
            .bind(now)
            .bind(now)
            .bind(format!("{}messages", self.inner.names.prefix))
            .fetch_one(&self.inner.pool)
            .await?;
        let pending: i64 = row.try_get("pending")?;
        let oldest: Option<DateTime<Utc>> = row.try_get("oldest")?;
        let retry_waiting: i64 = row.try_get("waiting")?;
        let parked: i64 = row.try_get("held")?;
        Ok(StoreStats {
            pending,
            ready: (pending - retry_waiting - parked).max(0),
            retry_waiting,
            parked,
            oldest_pending_age: oldest.map(|t| (now - t).to_std().unwrap_or(Duration::ZERO)),
            dead_letters: row.try_get("dead")?,
            dead_tuples: None,
            oldest_xmin_age: None,
            autovacuum: None,
            table_bytes: row.try_get("bytes")?,
        })
    }

    async fn topic_stats(&self) -> Result<Vec<crate::store::TopicStats>> {
        crate::store::admin::AdminOps::select_topics(self).await
    }

    async fn vacuum(&self) -> Result<()> {
        // InnoDB purges deleted rows in the background.
        Ok(())
    }

    async fn park(&self, p: Park) -> Result<u64> {
        let pool = &self.inner.pool;
        let sql = &self.inner.sql;
        if let Some(wake_by) = p.wake_by {
            execute_read_committed(pool, sqlx::query(&sql.wake_sleeping).bind(wake_by)).await?;
            let keys: Vec<Vec<u8>> = sqlx::query_scalar(&sql.lifted_keys).fetch_all(pool).await?;
            // Within MySQL's 65,535 parameters per statement.
            for chunk in keys.chunks(10_000) {
                let statement = with_list(&sql.unpark, chunk.len());
                let mut q = sqlx::query(&statement);
                for k in chunk {
                    q = q.bind(k.as_slice());
                }
                execute_read_committed(pool, q.persistent(false)).await?;
            }
        }
        let seqs: Vec<i64> = sqlx::query_scalar(&sql.park_candidates)
            .bind(p.limit)
            .fetch_all(pool)
            .await?;
        if seqs.is_empty() {
            return Ok(0);
        }
        let statement = with_list(&sql.park, seqs.len());
        let mut q = sqlx::query(&statement);
        for s in &seqs {
            q = q.bind(*s);
        }
        execute_read_committed(pool, q.persistent(false)).await?;
        // Counted as read: a pass parks again at once while it reads its
        // limit, whether or not a row changed under it meanwhile.
        Ok(seqs.len() as u64)
    }

    fn local_signal(&self) -> Arc<Notify> {
        self.inner.signal.clone()
    }

    async fn listen(&self) -> Result<Option<Box<dyn WakeSource>>> {
        // No LISTEN/NOTIFY: relays of other processes poll.
        Ok(None)
    }
}
