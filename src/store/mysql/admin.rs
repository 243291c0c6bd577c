//! The operator's side on MySQL: the statements behind [`AdminOps`], the
//! public methods declared on [`MySqlOutbox`] by `admin_api!` (see
//! `store/admin.rs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::mysql::{MySql, MySqlArguments, MySqlPool, MySqlRow};
use sqlx::Row;

use super::decode::{message_from_row, req_text, text, uuid_from_bytes, whole_message_from_row};
use super::relay_ops::topics_from_counts;
use super::statements::{with_list, with_pairs};
use super::{begin_read_committed, execute_read_committed, MySqlOutbox};
use crate::error::Result;
use crate::message::{MessageId, OutboxMessage};
use crate::store::admin::{admin_api, AdminOps};
use crate::store::{
    blocking_message, first_of_each_id, replay_report, BlockedKey, DeadLetter, DeadLetterFilter,
    PublishedMessage, RelayStatus, ReplayReport, StoreStats, TopicStats,
};

/// Positions per statement of a replay (two parameters each in the
/// lifted blocks), within MySQL's 65,535 parameters per statement.
const REPLAY_CHUNK: usize = 10_000;

impl MySqlOutbox {
    admin_api!();

    /// Pending messages per topic, read on `pool` (the application's pool
    /// for the operator, the relay's for its gauges).
    async fn topics_on(&self, pool: &MySqlPool) -> Result<Vec<TopicStats>> {
        topics_from_counts(self.topic_counts_on(pool, Utc::now()).await?)
    }

    /// Pending messages per topic, for the relay's gauges: on its pool.
    pub(super) async fn relay_topic_stats(&self) -> Result<Vec<TopicStats>> {
        self.topics_on(self.relay_pool()).await
    }
}

#[async_trait]
impl AdminOps for MySqlOutbox {
    async fn select_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let rows = bind_filter(sqlx::query(&self.inner.sql.dead_letters_matching), filter)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    async fn replay_matching(&self, filter: &DeadLetterFilter) -> Result<ReplayReport> {
        let sql = &self.inner.sql;
        let mut tx = begin_read_committed(&self.inner.pool).await?;
        let rows: Vec<(i64, Vec<u8>)> = bind_filter(sqlx::query_as(&sql.replay_candidates), filter)
            .fetch_all(&mut *tx)
            .await?;
        let candidates = rows
            .into_iter()
            .map(|(seq, id)| Ok((seq, MessageId::from_uuid(uuid_from_bytes(&id)?))))
            .collect::<Result<Vec<_>>>()?;
        let offered = first_of_each_id(&candidates);
        let mut inserted: Vec<i64> = Vec::new();
        for chunk in offered.chunks(REPLAY_CHUNK) {
            sqlx::query(&with_list(&sql.replay_insert, chunk.len()))
                .persistent(false)
                .bind_all(chunk)
                .execute(&mut *tx)
                .await?;
            let back: Vec<i64> = sqlx::query_scalar(&with_list(&sql.replay_back, chunk.len()))
                .persistent(false)
                .bind_all(chunk)
                .fetch_all(&mut *tx)
                .await?;
            if back.is_empty() {
                continue;
            }
            let blocks: Vec<(Vec<u8>, i64)> =
                sqlx::query_as(&with_list(&sql.replay_blocks, back.len()))
                    .persistent(false)
                    .bind_all(&back)
                    .fetch_all(&mut *tx)
                    .await?;
            if !blocks.is_empty() {
                let text = with_pairs(&sql.unblock, blocks.len());
                let mut q = sqlx::query(&text).persistent(false);
                for (key, seq) in blocks {
                    q = q.bind(key).bind(seq);
                }
                q.execute(&mut *tx).await?;
            }
            sqlx::query(&with_list(&sql.replay_delete, back.len()))
                .persistent(false)
                .bind_all(&back)
                .execute(&mut *tx)
                .await?;
            inserted.extend(back);
        }
        tx.commit().await?;
        Ok(replay_report(&candidates, &inserted))
    }

    async fn delete_dead_letter(&self, id: MessageId) -> Result<bool> {
        let sql = &self.inner.sql;
        let mut tx = begin_read_committed(&self.inner.pool).await?;
        let gone: Option<(Option<Vec<u8>>, i64)> = sqlx::query_as(&sql.discard_candidate)
            .bind(id.as_uuid().as_bytes().to_vec())
            .fetch_optional(&mut *tx)
            .await?;
        let Some((key, seq)) = gone else {
            tx.rollback().await?;
            return Ok(false);
        };
        sqlx::query(&sql.discard_dead_letter)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
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
        let rows: Vec<(Vec<u8>, i64, DateTime<Utc>, String)> =
            sqlx::query_as(&self.inner.sql.blocked_keys)
                .fetch_all(&self.inner.pool)
                .await?;
        rows.into_iter()
            .map(|(partition_key, position, since, at)| {
                Ok(BlockedKey {
                    partition_key: text(partition_key)?,
                    position,
                    since,
                    message: blocking_message(&at),
                })
            })
            .collect()
    }

    async fn delete_block(&self, key: &str) -> Result<bool> {
        let q = sqlx::query(&self.inner.sql.unblock_key).bind(key);
        let done = execute_read_committed(&self.inner.pool, q).await?;
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
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<PublishedMessage>> {
        let rows = sqlx::query(&self.inner.sql.published_since)
            .bind(since)
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PublishedMessage {
                    message: whole_message_from_row(r)?,
                    published_at: r.try_get("published_at")?,
                })
            })
            .collect()
    }

    async fn select_topics(&self) -> Result<Vec<TopicStats>> {
        self.topics_on(&self.inner.pool).await
    }

    async fn select_stats(&self) -> Result<StoreStats> {
        Ok(self.figures_on(&self.inner.pool).await?.0)
    }

    async fn select_figures(&self) -> Result<(StoreStats, Vec<TopicStats>)> {
        self.figures_on(&self.inner.pool).await
    }

    async fn select_relays(&self) -> Result<Vec<RelayStatus>> {
        let rows: Vec<(Vec<u8>, DateTime<Utc>, bool, Option<Vec<u8>>, i64)> =
            sqlx::query_as(&self.inner.sql.relays)
                .fetch_all(&self.inner.pool)
                .await?;
        rows.into_iter()
            .map(
                |(relay, heartbeat_expires_at, alive, publish_error, leases)| {
                    Ok(RelayStatus {
                        relay: uuid_from_bytes(&relay)?,
                        heartbeat_expires_at,
                        alive,
                        publish_error: publish_error.map(text).transpose()?,
                        leases,
                    })
                },
            )
            .collect()
    }
}

fn dead_letter_from_row(r: &MySqlRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        message: message_from_row(r)?.0,
        attempts: r.try_get("attempts")?,
        last_error: req_text(r, "last_error")?,
        dead_at: r.try_get("dead_at")?,
    })
}

/// Binds a filter as the parameters of `dead_letters_matching.sql` and
/// `replay_candidates.sql`: each condition's value twice, then the limit.
fn bind_filter<'q, Q: BindFilter<'q>>(q: Q, f: &DeadLetterFilter) -> Q {
    q.bind_twice(f.id.map(|id| id.as_uuid().as_bytes().to_vec()))
        .bind_twice(f.topic.clone())
        .bind_twice(f.partition_key.clone())
        .bind_twice(f.error_contains.clone())
        .bind_twice(f.dead_since)
        .bind_twice(f.dead_before)
        .bind_twice(f.after_position)
        // MySQL has no "no limit": the largest one stands for it.
        .bind_one(f.limit.map_or(i64::MAX, i64::from))
}

/// The query types a filter or a list of positions is bound to: the
/// listing decodes rows, the replay's candidates tuples, and sqlx gives
/// `Query`, `QueryAs` and `QueryScalar` no common `bind`.
trait BindFilter<'q>: Sized {
    fn bind_one<T>(self, value: T) -> Self
    where
        T: sqlx::Encode<'q, MySql> + sqlx::Type<MySql> + Send + 'q;

    /// Binds each position of a list.
    fn bind_all(self, positions: &[i64]) -> Self {
        positions.iter().fold(self, |q, p| q.bind_one(*p))
    }

    fn bind_twice<T>(self, value: Option<T>) -> Self
    where
        T: sqlx::Encode<'q, MySql> + sqlx::Type<MySql> + Send + Clone + 'q,
    {
        self.bind_one(value.clone()).bind_one(value)
    }
}

impl<'q> BindFilter<'q> for sqlx::query::Query<'q, MySql, MySqlArguments> {
    fn bind_one<T>(self, value: T) -> Self
    where
        T: sqlx::Encode<'q, MySql> + sqlx::Type<MySql> + Send + 'q,
    {
        self.bind(value)
    }
}

impl<'q, O> BindFilter<'q> for sqlx::query::QueryScalar<'q, MySql, O, MySqlArguments> {
    fn bind_one<T>(self, value: T) -> Self
    where
        T: sqlx::Encode<'q, MySql> + sqlx::Type<MySql> + Send + 'q,
    {
        self.bind(value)
    }
}

impl<'q, O> BindFilter<'q> for sqlx::query::QueryAs<'q, MySql, O, MySqlArguments> {
    fn bind_one<T>(self, value: T) -> Self
    where
        T: sqlx::Encode<'q, MySql> + sqlx::Type<MySql> + Send + 'q,
    {
        self.bind(value)
    }
}
