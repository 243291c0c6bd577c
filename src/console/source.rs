//! What the console reads and changes: the operator's API of an outbox,
//! behind one object-safe trait so one console serves any backend.

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::export::ExportConsumer;
use crate::message::MessageId;
use crate::store::{
    BlockedKey, DeadLetter, DeadLetterFilter, RelayStatus, ReplayReport, StoreStats, TopicStats,
};

/// Dead letters one page of a bulk discard reads.
const DISCARD_PAGE: u32 = 500;

/// The operator's API of an outbox, as the [console](super) uses it.
/// Implemented by [`PgOutbox`](crate::PgOutbox),
/// [`SqliteOutbox`](crate::SqliteOutbox) and `MySqlOutbox`, each method
/// being the outbox's own of the same name.
#[async_trait]
pub trait ConsoleSource: Send + Sync + 'static {
    /// See `stats` on the outboxes.
    async fn stats(&self) -> Result<StoreStats>;
    /// See `topic_stats` on the outboxes.
    async fn topic_stats(&self) -> Result<Vec<TopicStats>>;
    /// See `stats_and_topics` on the outboxes.
    async fn stats_and_topics(&self) -> Result<(StoreStats, Vec<TopicStats>)> {
        Ok((self.stats().await?, self.topic_stats().await?))
    }
    /// See `relays` on the outboxes.
    async fn relays(&self) -> Result<Vec<RelayStatus>>;
    /// See `dead_letters_matching` on the outboxes.
    async fn dead_letters_matching(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>>;
    /// See `replay_dead_letters` on the outboxes.
    async fn replay_dead_letters(&self, filter: &DeadLetterFilter) -> Result<ReplayReport>;
    /// See `discard_dead_letter` on the outboxes.
    async fn discard_dead_letter(&self, id: MessageId) -> Result<()>;
    /// See `blocked_keys` on the outboxes.
    async fn blocked_keys(&self) -> Result<Vec<BlockedKey>>;
    /// See `unblock` on the outboxes.
    async fn unblock(&self, key: &str) -> Result<bool>;
    /// See `export_consumers` on the outboxes.
    async fn export_consumers(&self, max: i64) -> Result<Vec<ExportConsumer>>;
}

macro_rules! console_source {
    ($outbox:ty) => {
        #[async_trait]
        impl ConsoleSource for $outbox {
            async fn stats(&self) -> Result<StoreStats> {
                <$outbox>::stats(self).await
            }
            async fn topic_stats(&self) -> Result<Vec<TopicStats>> {
                <$outbox>::topic_stats(self).await
            }
            async fn stats_and_topics(&self) -> Result<(StoreStats, Vec<TopicStats>)> {
                <$outbox>::stats_and_topics(self).await
            }
            async fn relays(&self) -> Result<Vec<RelayStatus>> {
                <$outbox>::relays(self).await
            }
            async fn dead_letters_matching(
                &self,
                filter: &DeadLetterFilter,
            ) -> Result<Vec<DeadLetter>> {
                <$outbox>::dead_letters_matching(self, filter).await
            }
            async fn replay_dead_letters(&self, filter: &DeadLetterFilter) -> Result<ReplayReport> {
                <$outbox>::replay_dead_letters(self, filter).await
            }
            async fn discard_dead_letter(&self, id: MessageId) -> Result<()> {
                <$outbox>::discard_dead_letter(self, id).await
            }
            async fn blocked_keys(&self) -> Result<Vec<BlockedKey>> {
                <$outbox>::blocked_keys(self).await
            }
            async fn unblock(&self, key: &str) -> Result<bool> {
                <$outbox>::unblock(self, key).await
            }
            async fn export_consumers(&self, max: i64) -> Result<Vec<ExportConsumer>> {
                <$outbox>::export_consumers(self, max).await
            }
        }
    };
}

#[cfg(feature = "postgres")]
console_source!(crate::PgOutbox);
#[cfg(feature = "sqlite")]
console_source!(crate::SqliteOutbox);
#[cfg(feature = "mysql")]
console_source!(crate::MySqlOutbox);

/// What a bulk discard did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Discarded {
    pub(crate) discarded: u64,
    /// Dead letters that match but were left: an older dead letter of the
    /// same id, outside the filter, would have gone in their place.
    pub(crate) kept: u64,
}

/// Discards every dead letter that `filter` matches, page by page, of
/// those dead-lettered before the call: one that dies while it runs was
/// never shown to the operator and stays. Discarding an id removes its
/// oldest dead letter, so one is discarded only when it is the oldest of
/// its id: nothing outside the filter goes (unless another operator
/// discards that oldest one between the check and the discard).
pub(crate) async fn discard_matching(
    source: &dyn ConsoleSource,
    filter: &DeadLetterFilter,
) -> Result<Discarded> {
    let started = chrono::Utc::now();
    let mut filter = filter.clone();
    if filter.dead_before.is_none_or(|b| b > started) {
        filter.dead_before = Some(started);
    }
    let filter = &filter;
    let mut done = Discarded::default();
    let mut left = filter.limit.map(u64::from);
    let mut after = filter.after_position;
    loop {
        let page_size = left.map_or(DISCARD_PAGE, |l| l.min(u64::from(DISCARD_PAGE)) as u32);
        if page_size == 0 {
            return Ok(done);
        }
        let mut page_filter = filter.clone().limit(page_size);
        page_filter.after_position = after;
        let page = source.dead_letters_matching(&page_filter).await?;
        let Some(last) = page.last().map(|d| d.message.position()) else {
            return Ok(done);
        };
        for d in &page {
            let oldest = DeadLetterFilter::new().id(d.id()).limit(1);
            let first = source.dead_letters_matching(&oldest).await?;
            if first.first().map(|f| f.message.position()) != Some(d.message.position()) {
                done.kept += 1;
                continue;
            }
            match source.discard_dead_letter(d.id()).await {
                Ok(()) => done.discarded += 1,
                // Gone meanwhile (another operator): nothing to do.
                Err(Error::DeadLetterNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        after = Some(last);
        left = left.map(|l| l.saturating_sub(page.len() as u64));
    }
}
