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
use crate::store::{store_ops, Park, Purge, StoreStats, TopicStats};

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
        Ok(self.figures_on(self.relay_pool()).await?.0)
    }

    async fn figures(&self) -> Result<(StoreStats, Vec<TopicStats>)> {
        self.figures_on(self.relay_pool()).await
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
    /// What is in the outbox now and its topics', read on `pool`: one
    /// scan of the messages table, by topic, and one read of what lies
    /// outside it.
    pub(super) async fn figures_on(
        &self,
        pool: &MySqlPool,
    ) -> Result<(StoreStats, Vec<TopicStats>)> {
        let now = Utc::now();
        let counts = self.topic_counts_on(pool, now).await?;
        let table = format!("{}messages", self.inner.names.prefix);
        let row = sqlx::query(&self.inner.sql.stats)
            .bind(&table)
            .bind(&table)
            .fetch_one(pool)
            .await?;
        let sum = |f: fn(&TopicCount) -> i64| counts.iter().map(f).sum::<i64>();
        let oldest = counts.iter().map(|t| t.2).min();
        let stats = StoreStats {
            table_bytes: row.try_get("bytes")?,
            last_position: row.try_get("last_position")?,
            ..StoreStats::counted(
                sum(|t| t.1),
                sum(|t| t.3),
                sum(|t| t.4),
                oldest.map(|t| (now - t).to_std().unwrap_or(Duration::ZERO)),
                row.try_get("dead")?,
            )
        };
        Ok((stats, topics_from_counts(counts)?))
    }

    /// The rows of `topic_stats.sql`, read on `pool` as of `now`.
    pub(super) async fn topic_counts_on(
        &self,
        pool: &MySqlPool,
        now: DateTime<Utc>,
    ) -> Result<Vec<TopicCount>> {
        Ok(sqlx::query_as(&self.inner.sql.topic_stats)
            .bind(now)
            .bind(now)
            .fetch_all(pool)
            .await?)
    }
}

/// A row of `topic_stats.sql`: topic, pending, oldest's creation time,
/// retries not due, held back behind a blocked key.
pub(super) type TopicCount = (Vec<u8>, i64, DateTime<Utc>, i64, i64);

/// The topics' counts as the gauges per topic read them.
pub(super) fn topics_from_counts(counts: Vec<TopicCount>) -> Result<Vec<TopicStats>> {
    counts
        .into_iter()
        .map(|(topic, pending, oldest_created_at, ..)| {
            Ok(TopicStats {
                topic: text(topic)?,
                pending,
                oldest_created_at,
            })
        })
        .collect()
}
