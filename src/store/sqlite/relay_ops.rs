//! The operations the relay runs on this backend. Leases, claims and
//! acknowledgements live in their own files; the small operations are here.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use sqlx::Row;

use super::decode::{json, micros};
use super::{ack, claim, leases, migrate, SqliteOutbox};
use crate::error::Result;
use crate::store::{store_ops, Park, Purge, StoreStats};

store_ops! {
    SqliteOutbox;

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
            .bind(format!("{}messages", self.inner.names.prefix))
            .fetch_one(&self.inner.pool)
            .await?;
        let oldest: Option<i64> = row.try_get(1)?;
        Ok(StoreStats {
            last_position: row.try_get(5)?,
            ..StoreStats::counted(
                row.try_get(0)?,
                row.try_get(3)?,
                row.try_get(4)?,
                oldest.map(|t| {
                    Duration::from_micros(u64::try_from(now.saturating_sub(t)).unwrap_or(0))
                }),
                row.try_get(2)?,
            )
        })
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
}
