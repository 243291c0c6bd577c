//! The operator's side on SQLite: the statements behind [`AdminOps`], the
//! public methods declared on [`SqliteOutbox`] by `admin_api!` (see
//! `store/admin.rs`).

use async_trait::async_trait;
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteRow};
use sqlx::Row;

use super::decode::{
    json, message_from_row, micros, time_from_micros, uuid_from_bytes, whole_message_from_row,
};
use super::SqliteOutbox;
use crate::error::Result;
use crate::message::{MessageId, OutboxMessage};
use crate::store::admin::{admin_api, AdminOps};
use crate::store::{
    blocking_message, first_of_each_id, replay_report, BlockedKey, DeadLetter, DeadLetterFilter,
    PublishedMessage, RelayStatus, ReplayReport, StoreStats, TopicStats,
};

impl SqliteOutbox {
    admin_api!();

    /// Pending messages per topic, for the relay's gauges (one pool here).
    pub(super) async fn relay_topic_stats(&self) -> Result<Vec<TopicStats>> {
        AdminOps::select_topics(self).await
    }
}

#[async_trait]
impl AdminOps for SqliteOutbox {
    async fn select_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let rows = bind_filter(sqlx::query(&self.inner.sql.dead_letters_matching), filter)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    async fn replay_matching(&self, filter: &DeadLetterFilter) -> Result<ReplayReport> {
        let sql = &self.inner.sql;
        // IMMEDIATE: the replay reads before it writes, and a deferred
        // transaction could then fail with SQLITE_BUSY instead of waiting.
        let mut tx = self.inner.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<(i64, Vec<u8>)> = bind_filter(sqlx::query_as(&sql.replay_candidates), filter)
            .fetch_all(&mut *tx)
            .await?;
        let candidates = rows
            .into_iter()
            .map(|(seq, id)| Ok((seq, MessageId::from_uuid(uuid_from_bytes(&id)?))))
            .collect::<Result<Vec<_>>>()?;
        let offered = json(&serde_json::json!(first_of_each_id(&candidates)));
        let inserted: Vec<i64> = sqlx::query_scalar(&sql.replay_insert)
            .bind(offered)
            .fetch_all(&mut *tx)
            .await?;
        if !inserted.is_empty() {
            let back = json(&serde_json::json!(inserted));
            sqlx::query(&sql.replay_unblock)
                .bind(&back)
                .execute(&mut *tx)
                .await?;
            sqlx::query(&sql.replay_delete)
                .bind(&back)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(replay_report(&candidates, &inserted))
    }

    async fn delete_dead_letter(&self, id: MessageId) -> Result<bool> {
        let sql = &self.inner.sql;
        let mut tx = self.inner.pool.begin().await?;
        let gone: Option<(Option<String>, i64)> = sqlx::query_as(&sql.discard_dead_letter)
            .bind(id.as_uuid().as_bytes().to_vec())
            .fetch_optional(&mut *tx)
            .await?;
        let Some((key, seq)) = gone else {
            return Ok(false);
        };
        if let Some(key) = key {
            sqlx::query(&sql.discard_unblock)
                .bind(key)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn select_blocked_keys(&self) -> Result<Vec<BlockedKey>> {
        let rows: Vec<(String, i64, i64, String)> = sqlx::query_as(&self.inner.sql.blocked_keys)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.into_iter()
            .map(|(partition_key, position, since, at)| {
                Ok(BlockedKey {
                    partition_key,
                    position,
                    since: time_from_micros(since)?,
                    message: blocking_message(&at),
                })
            })
            .collect()
    }

    async fn delete_block(&self, key: &str) -> Result<bool> {
        let done = sqlx::query(&self.inner.sql.unblock_key)
            .bind(key)
            .execute(&self.inner.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn count_pending(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(&self.inner.sql.pending_count)
            .fetch_one(&self.inner.pool)
            .await?)
    }

    async fn select_published(&self, limit: i64) -> Result<Vec<OutboxMessage>> {
        let rows = sqlx::query(&self.inner.sql.published)
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(whole_message_from_row).collect()
    }

    async fn select_published_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        limit: i64,
    ) -> Result<Vec<PublishedMessage>> {
        let rows = sqlx::query(&self.inner.sql.published_since)
            .bind(micros(since))
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PublishedMessage {
                    message: whole_message_from_row(r)?,
                    published_at: time_from_micros(r.try_get("published_at")?)?,
                })
            })
            .collect()
    }

    async fn select_stats(&self) -> Result<StoreStats> {
        // One pool: the relay's statement is the operator's.
        crate::store::sealed::StoreOps::stats(self).await
    }

    async fn select_topics(&self) -> Result<Vec<TopicStats>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(&self.inner.sql.topic_stats)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.into_iter()
            .map(|(topic, pending, oldest)| {
                Ok(TopicStats {
                    topic,
                    pending,
                    oldest_created_at: time_from_micros(oldest)?,
                })
            })
            .collect()
    }

    async fn select_relays(&self) -> Result<Vec<RelayStatus>> {
        let rows: Vec<(Vec<u8>, i64, bool, Option<String>, i64)> =
            sqlx::query_as(&self.inner.sql.relays)
                .bind(micros(chrono::Utc::now()))
                .fetch_all(&self.inner.pool)
                .await?;
        rows.into_iter()
            .map(|(relay, expires, alive, publish_error, leases)| {
                Ok(RelayStatus {
                    relay: uuid_from_bytes(&relay)?,
                    heartbeat_expires_at: time_from_micros(expires)?,
                    alive,
                    publish_error,
                    leases,
                })
            })
            .collect()
    }
}

fn dead_letter_from_row(r: &SqliteRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        message: message_from_row(r)?.0,
        attempts: r.try_get("attempts")?,
        last_error: r.try_get("last_error")?,
        dead_at: time_from_micros(r.try_get("dead_at")?)?,
    })
}

/// Binds a filter as the eight parameters of `dead_letters_matching.sql`
/// and `replay_candidates.sql`.
fn bind_filter<'q, Q: BindFilter<'q>>(q: Q, f: &DeadLetterFilter) -> Q {
    q.bind_opt(f.id.map(|id| id.as_uuid().as_bytes().to_vec()))
        .bind_opt(f.topic.clone())
        .bind_opt(f.partition_key.clone())
        .bind_opt(f.error_contains.clone())
        .bind_opt(f.dead_since.map(micros))
        .bind_opt(f.dead_before.map(micros))
        .bind_opt(f.after_position)
        // SQLite reads a negative limit as none.
        .bind_opt(Some(f.limit.map_or(-1, i64::from)))
}

/// The query types a filter is bound to: the listing decodes rows, the
/// replay's candidates a tuple, and sqlx gives `Query` and `QueryAs` no
/// common `bind`.
trait BindFilter<'q>: Sized {
    fn bind_opt<T>(self, value: Option<T>) -> Self
    where
        T: sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Send + 'q;
}

impl<'q> BindFilter<'q> for sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>> {
    fn bind_opt<T>(self, value: Option<T>) -> Self
    where
        T: sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Send + 'q,
    {
        self.bind(value)
    }
}

impl<'q, O> BindFilter<'q> for sqlx::query::QueryAs<'q, Sqlite, O, SqliteArguments<'q>> {
    fn bind_opt<T>(self, value: Option<T>) -> Self
    where
        T: sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Send + 'q,
    {
        self.bind(value)
    }
}
