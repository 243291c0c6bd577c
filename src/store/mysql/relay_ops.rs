//! The operations the relay runs on this backend. Leases, claims and
//! acknowledgements live in their own files; the small operations are here.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlPool;
use sqlx::Row;

use super::decode::text;
use super::statements::with_list;
use super::{ack, claim, execute_read_committed, leases, migrate, MySqlOutbox};
use crate::error::Result;
use crate::store::{store_ops, Park, Purge, StoreStats};

store_ops! {
    MySqlOutbox;

    async fn key_sequences(&self, keys: &[String]) -> Result<HashMap<String, i64>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let statement = with_list(&self.inner.sql.key_seq_read, keys.len());
        let mut q = sqlx::query_as::<_, (Vec<u8>, i64)>(&statement);
        for k in keys {
            q = q.bind(k);
        }
        let rows = q.persistent(false).fetch_all(self.relay_pool()).await?;
        rows.into_iter().map(|(k, n)| Ok((text(k)?, n))).collect()
    }

    async fn purge_published(&self, p: Purge) -> Result<u64> {
        let Purge { before, limit } = p;
        let q = sqlx::query(&self.inner.sql.purge).bind(before).bind(limit);
        Ok(execute_read_committed(self.relay_pool(), q)
            .await?
            .rows_affected())
    }

    async fn stats(&self) -> Result<StoreStats> {
        self.stats_on(self.relay_pool()).await
    }

    async fn vacuum(&self) -> Result<()> {
        // InnoDB purges deleted rows in the background.
        Ok(())
    }

    async fn park(&self, p: Park) -> Result<u64> {
        let pool = self.relay_pool();
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
}

impl MySqlOutbox {
    /// What is in the outbox now, read on `pool`.
    pub(super) async fn stats_on(&self, pool: &MySqlPool) -> Result<StoreStats> {
        let now = Utc::now();
        let row = sqlx::query(&self.inner.sql.stats)
            .bind(now)
            .bind(now)
            .bind(format!("{}messages", self.inner.names.prefix))
            .bind(format!("{}messages", self.inner.names.prefix))
            .fetch_one(pool)
            .await?;
        let oldest: Option<DateTime<Utc>> = row.try_get("oldest")?;
        Ok(StoreStats {
            table_bytes: row.try_get("bytes")?,
            last_position: row.try_get("last_position")?,
            ..StoreStats::counted(
                row.try_get("pending")?,
                row.try_get("waiting")?,
                row.try_get("held")?,
                oldest.map(|t| (now - t).to_std().unwrap_or(Duration::ZERO)),
                row.try_get("dead")?,
            )
        })
    }
}
