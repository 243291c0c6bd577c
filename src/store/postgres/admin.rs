//! The operator's side on PostgreSQL: the statements behind
//! [`AdminOps`], the public methods declared on [`PgOutbox`] by
//! `admin_api!` (see `store/admin.rs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::{Query, QueryAs};
use uuid::Uuid;

use super::connection::Alone;
use super::decode::{
    dead_letter_from_row, published_from_row, stats_from_row, topics_from_counts, TopicCount,
};
use super::PgOutbox;
use crate::error::Result;
use crate::message::{MessageId, OutboxMessage};
use crate::store::admin::{admin_api, AdminOps};
use crate::store::{
    blocking_message, BlockedKey, DeadLetter, DeadLetterFilter, NotReplayed, PublishedMessage,
    RelayStatus, ReplayReport, StoreStats, TopicStats,
};

impl PgOutbox {
    admin_api!();

    /// Pending messages per topic, read through `on` (the application's
    /// pool for the operator, the relay's for its gauges).
    pub(super) async fn topics_on(&self, on: Alone<'_>) -> Result<Vec<TopicStats>> {
        Ok(topics_from_counts(self.topic_counts(on).await?))
    }

    /// The outbox's figures and its topics', through `on`: one scan of
    /// the messages table, by topic, and one read of what lies outside it.
    pub(super) async fn figures_on(&self, on: Alone<'_>) -> Result<(StoreStats, Vec<TopicStats>)> {
        let counts = self.topic_counts(on).await?;
        let rows = on
            .rows(sqlx::query(&self.inner.sql.stats).bind(self.inner.names.messages.clone()))
            .await?;
        let row = rows
            .first()
            .ok_or(crate::Error::Database(sqlx::Error::RowNotFound))?;
        let stats = stats_from_row(row, &counts)?;
        Ok((stats, topics_from_counts(counts)))
    }

    /// The rows of `topic_stats.sql`, through `on`.
    async fn topic_counts(&self, on: Alone<'_>) -> Result<Vec<TopicCount>> {
        on.all(sqlx::query_as(&self.inner.sql.topic_stats)).await
    }
}

#[async_trait]
impl AdminOps for PgOutbox {
    async fn select_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let mut c = self.standalone().await?;
        let rows = bind_filter(
            sqlx::query(&self.inner.sql.dead_letters_matching).persistent(self.named()),
            filter,
        )
        .fetch_all(c.conn())
        .await?;
        c.finish().await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    async fn replay_matching(&self, filter: &DeadLetterFilter) -> Result<ReplayReport> {
        let mut c = self.standalone().await?;
        let (replayed, positions, ids): (i64, Vec<i64>, Vec<Uuid>) = bind_filter(
            sqlx::query_as(&self.inner.sql.replay_dead_letters).persistent(self.named()),
            filter,
        )
        .fetch_one(c.conn())
        .await?;
        c.finish().await?;
        Ok(ReplayReport {
            replayed: replayed as u64,
            not_replayed: positions
                .into_iter()
                .zip(ids)
                .map(|(position, id)| NotReplayed {
                    id: MessageId::from_uuid(id),
                    position,
                })
                .collect(),
        })
    }

    async fn delete_dead_letter(&self, id: MessageId) -> Result<bool> {
        let q = sqlx::query_scalar(&self.inner.sql.discard_dead_letter).bind(id.as_uuid());
        let n: i64 = self.on_app().one(q).await?;
        Ok(n > 0)
    }

    async fn select_blocked_keys(&self) -> Result<Vec<BlockedKey>> {
        let rows: Vec<(String, i64, DateTime<Utc>, String)> = self
            .on_app()
            .all(sqlx::query_as(&self.inner.sql.blocked_keys))
            .await?;
        Ok(rows
            .into_iter()
            .map(|(partition_key, position, since, at)| BlockedKey {
                partition_key,
                position,
                since,
                message: blocking_message(&at),
            })
            .collect())
    }

    async fn delete_block(&self, key: &str) -> Result<bool> {
        let q = sqlx::query(&self.inner.sql.unblock_key).bind(key);
        Ok(self.on_app().execute(q).await? > 0)
    }

    async fn count_pending(&self) -> Result<i64> {
        let q = sqlx::query_scalar(&self.inner.sql.pending_count);
        self.on_app().one(q).await
    }

    async fn select_published(&self, limit: i64) -> Result<Vec<OutboxMessage>> {
        let q = sqlx::query(&self.inner.sql.published).bind(limit);
        let rows = self.on_app().rows(q).await?;
        rows.iter().map(published_from_row).collect()
    }

    async fn select_published_since(
        &self,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<PublishedMessage>> {
        let q = sqlx::query(&self.inner.sql.published_since)
            .bind(since)
            .bind(limit);
        let rows = self.on_app().rows(q).await?;
        rows.iter()
            .map(|r| {
                Ok(PublishedMessage {
                    message: published_from_row(r)?,
                    published_at: sqlx::Row::try_get(r, "published_at")?,
                })
            })
            .collect()
    }

    async fn select_topics(&self) -> Result<Vec<TopicStats>> {
        self.topics_on(self.on_app()).await
    }

    async fn select_stats(&self) -> Result<StoreStats> {
        Ok(self.figures_on(self.on_app()).await?.0)
    }

    async fn select_figures(&self) -> Result<(StoreStats, Vec<TopicStats>)> {
        self.figures_on(self.on_app()).await
    }

    async fn select_relays(&self) -> Result<Vec<RelayStatus>> {
        let rows: Vec<(Uuid, DateTime<Utc>, bool, Option<String>, i64)> = self
            .on_app()
            .all(sqlx::query_as(&self.inner.sql.relays))
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(relay, heartbeat_expires_at, alive, publish_error, leases)| RelayStatus {
                    relay,
                    heartbeat_expires_at,
                    alive,
                    publish_error,
                    leases,
                },
            )
            .collect())
    }
}

/// The query types a filter is bound to: the listing decodes rows, the
/// replay a tuple, and sqlx gives `Query` and `QueryAs` no common `bind`.
trait BindFilter: Sized {
    fn bind_opt<T>(self, value: Option<T>) -> Self
    where
        T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send + 'static;
}

impl<'q> BindFilter for Query<'q, Postgres, PgArguments> {
    fn bind_opt<T>(self, value: Option<T>) -> Self
    where
        T: for<'a> sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres> + Send + 'static,
    {
        self.bind(value)
    }
}

impl<'q, O> BindFilter for QueryAs<'q, Postgres, O, PgArguments> {
    fn bind_opt<T>(self, value: Option<T>) -> Self
    where
        T: for<'a> sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres> + Send + 'static,
    {
        self.bind(value)
    }
}

/// Binds a filter as the eight parameters of `dead_letters_matching.sql`
/// and `replay_dead_letters.sql`.
fn bind_filter<Q: BindFilter>(q: Q, f: &DeadLetterFilter) -> Q {
    q.bind_opt(f.id.map(|id| id.as_uuid()))
        .bind_opt(f.topic.clone())
        .bind_opt(f.partition_key.clone())
        .bind_opt(f.error_contains.clone())
        .bind_opt(f.dead_since)
        .bind_opt(f.dead_before)
        .bind_opt(f.after_position)
        .bind_opt(f.limit.map(i64::from))
}
