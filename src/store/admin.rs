//! The operator's API, the same on every backend: dead letters listed
//! (filtered, paged), replayed and discarded, blocked keys listed and
//! lifted, the pending count, retained published messages, the gauges.
//!
//! A backend implements [`AdminOps`], the statements alone; `admin_api!`
//! declares the public methods on its outbox type once for all backends,
//! with their rules (what a replay of one id reports, when the relays are
//! woken, which limits are refused) and their documentation.

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::message::{MessageId, OutboxMessage};
use crate::store::{
    BlockedKey, DeadLetter, DeadLetterFilter, PublishedMessage, RelayStatus, ReplayReport,
    StoreStats, TopicStats,
};

/// What a backend runs for the operator's API. Each method is one read or
/// one write in a transaction of its own; none wakes the relays.
#[async_trait]
pub(crate) trait AdminOps: Sync {
    /// The dead letters that match `filter`, oldest position first.
    async fn select_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>>;
    /// Sends the dead letters that match `filter` back (see
    /// [`ReplayReport`] for the rule).
    async fn replay_matching(&self, filter: &DeadLetterFilter) -> Result<ReplayReport>;
    /// Deletes the oldest dead letter of `id` and the block it holds;
    /// whether there was one.
    async fn delete_dead_letter(&self, id: MessageId) -> Result<bool>;
    /// The blocked keys, by key.
    async fn select_blocked_keys(&self) -> Result<Vec<BlockedKey>>;
    /// Deletes the block on `key`; whether there was one.
    async fn delete_block(&self, key: &str) -> Result<bool>;
    /// Messages not yet published nor dead-lettered.
    async fn count_pending(&self) -> Result<i64>;
    /// Up to `limit` retained published messages, oldest first.
    async fn select_published(&self, limit: i64) -> Result<Vec<OutboxMessage>>;
    /// Up to `limit` retained published messages published at or after
    /// `since`, in the order they were published.
    async fn select_published_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        limit: i64,
    ) -> Result<Vec<PublishedMessage>>;
    /// Pending messages per topic, by topic.
    async fn select_topics(&self) -> Result<Vec<TopicStats>>;
    /// What is in the outbox now (see [`StoreStats`]).
    async fn select_stats(&self) -> Result<StoreStats>;
    /// [`select_stats`](Self::select_stats) and
    /// [`select_topics`](Self::select_topics) together: one scan of the
    /// messages table where the backend counts both at once.
    async fn select_figures(&self) -> Result<(StoreStats, Vec<TopicStats>)> {
        Ok((self.select_stats().await?, self.select_topics().await?))
    }
    /// The relays with a recorded heartbeat, by id.
    async fn select_relays(&self) -> Result<Vec<RelayStatus>>;
}

/// Refuses a negative `limit` before anything is sent (one database would
/// reject it, another would read it as "no limit").
pub(crate) fn check_limit(limit: i64) -> Result<i64> {
    if limit < 0 {
        return Err(Error::InvalidConfig {
            field: "limit",
            reason: format!("must not be negative, not {limit}"),
        });
    }
    Ok(limit)
}

/// The dead letters at most `limit`, as a filter.
pub(crate) fn first_dead_letters(limit: i64) -> Result<DeadLetterFilter> {
    let limit = u32::try_from(check_limit(limit)?).unwrap_or(u32::MAX);
    Ok(DeadLetterFilter::new().limit(limit))
}

/// What replaying one id came to.
pub(crate) fn replayed_one(id: MessageId, report: &ReplayReport) -> Result<()> {
    match (report.replayed, report.not_replayed.is_empty()) {
        (0, true) => Err(Error::DeadLetterNotFound(id)),
        (0, false) => Err(Error::DeadLetterIdPending(id)),
        _ => Ok(()),
    }
}

/// Declares the operator's public methods on an outbox type that
/// implements [`AdminOps`] and has a `wake()`.
macro_rules! admin_api {
    () => {
        /// Dead letters, oldest first: the first `limit` of them.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a
        /// negative `limit`; [`Error::Database`](crate::Error::Database) if
        /// the read fails or a stored row cannot be decoded.
        pub async fn dead_letters(&self, limit: i64) -> crate::Result<Vec<crate::DeadLetter>> {
            let filter = crate::store::admin::first_dead_letters(limit)?;
            crate::store::admin::AdminOps::select_dead_letters(self, &filter).await
        }

        /// Dead letters that match `filter`, oldest position first: filter
        /// by topic, key, error text and time, and page with its limit and
        /// keyset cursor.
        ///
        /// # Errors
        ///
        /// [`Error::Database`](crate::Error::Database) if the read fails or
        /// a stored row cannot be decoded.
        pub async fn dead_letters_matching(
            &self,
            filter: &crate::DeadLetterFilter,
        ) -> crate::Result<Vec<crate::DeadLetter>> {
            crate::store::admin::AdminOps::select_dead_letters(self, filter).await
        }

        /// Sends a dead letter again: it returns to the outbox at its
        /// original position with its attempts reset, ahead of any later
        /// message of its key, whose block it lifts. Of several dead letters
        /// of one id (the id was enqueued again after its first message was
        /// dead-lettered) the oldest goes back. Writes in its own
        /// transaction.
        ///
        /// # Errors
        ///
        /// [`Error::DeadLetterNotFound`](crate::Error::DeadLetterNotFound)
        /// if there is no dead letter with this id;
        /// [`Error::DeadLetterIdPending`](crate::Error::DeadLetterIdPending)
        /// if a message with this id is pending (the dead letter stays:
        /// replay it once that message is published, or discard it);
        /// [`Error::Database`](crate::Error::Database) if the write fails
        /// (nothing is changed).
        pub async fn replay_dead_letter(&self, id: crate::MessageId) -> crate::Result<()> {
            let filter = crate::DeadLetterFilter::new().id(id).limit(1);
            let report = self.replay_dead_letters(&filter).await?;
            crate::store::admin::replayed_one(id, &report)
        }

        /// Sends every dead letter again (see [`replay_dead_letters`] for
        /// the rule); returns how many went back. A dead letter whose id is
        /// pending stays in the dead letters, with a warning logged; the
        /// filtered form reports each. Writes in its own transaction.
        ///
        /// [`replay_dead_letters`]: Self::replay_dead_letters
        ///
        /// # Errors
        ///
        /// [`Error::Database`](crate::Error::Database) if the write fails;
        /// then none is replayed.
        pub async fn replay_all_dead_letters(&self) -> crate::Result<u64> {
            let report = self
                .replay_dead_letters(&crate::DeadLetterFilter::new())
                .await?;
            crate::store::warn_not_replayed(&report);
            Ok(report.replayed)
        }

        /// Sends the dead letters that match `filter` again, oldest first,
        /// each to its original position with its attempts reset, lifting
        /// the block it holds on its key, and wakes the relays. A dead
        /// letter goes back only while no message with its id is pending,
        /// and of several dead letters of one id only the oldest goes back
        /// in one call: the others stay, unchanged, and are listed in the
        /// report. Writes in its own transaction.
        ///
        /// # Errors
        ///
        /// [`Error::Database`](crate::Error::Database) if the write fails;
        /// then none is replayed.
        pub async fn replay_dead_letters(
            &self,
            filter: &crate::DeadLetterFilter,
        ) -> crate::Result<crate::ReplayReport> {
            let report = crate::store::admin::AdminOps::replay_matching(self, filter).await?;
            if report.replayed > 0 {
                self.wake();
            }
            Ok(report)
        }

        /// Deletes a dead letter for good, lifts the block it holds on its
        /// key and wakes the relays. Of several dead letters of one id, the
        /// oldest goes. Writes in its own transaction.
        ///
        /// # Errors
        ///
        /// [`Error::DeadLetterNotFound`](crate::Error::DeadLetterNotFound)
        /// if there is no dead letter with this id;
        /// [`Error::Database`](crate::Error::Database) if the write fails
        /// (nothing is changed).
        pub async fn discard_dead_letter(&self, id: crate::MessageId) -> crate::Result<()> {
            if !crate::store::admin::AdminOps::delete_dead_letter(self, id).await? {
                return Err(crate::Error::DeadLetterNotFound(id));
            }
            self.wake();
            Ok(())
        }

        /// The keys held back behind a failed message (ordered topics), by
        /// key then position: the position that blocks each, since when,
        /// and where the message at that position is. A key appears once
        /// per failing head that blocks it (an older dead letter replayed
        /// while a newer one blocks the key: each holds the key until it
        /// goes through). A block whose message is
        /// [`Gone`](crate::BlockingMessage::Gone) is swept away by a relay's
        /// next claim.
        ///
        /// # Errors
        ///
        /// [`Error::Database`](crate::Error::Database) if the read fails or
        /// a stored time is out of range.
        pub async fn blocked_keys(&self) -> crate::Result<Vec<crate::BlockedKey>> {
            crate::store::admin::AdminOps::select_blocked_keys(self).await
        }

        /// Lifts every block on `key`, whatever messages they name, and wakes
        /// the relays; returns whether there was one. The message stays
        /// where it is: a dead letter stays dead, and a message still being
        /// retried blocks its key again if it fails again. The key's later
        /// messages may then be published before it: this is the
        /// operator's call. Writes in its own transaction.
        ///
        /// # Errors
        ///
        /// [`Error::Database`](crate::Error::Database) if the write fails.
        pub async fn unblock(&self, key: &str) -> crate::Result<bool> {
            let lifted = crate::store::admin::AdminOps::delete_block(self, key).await?;
            if lifted {
                self.wake();
            }
            Ok(lifted)
        }

        /// Number of messages waiting to be published (dead letters
        /// excluded).
        ///
        /// # Errors
        ///
        /// [`Error::Database`](crate::Error::Database) if the count fails.
        pub async fn pending_count(&self) -> crate::Result<i64> {
            crate::store::admin::AdminOps::count_pending(self).await
        }

        /// Retained published messages, oldest first: the first `limit` of
        /// them (none unless the relay keeps published messages).
        ///
        /// # Errors
        ///
        /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a
        /// negative `limit`; [`Error::Database`](crate::Error::Database) if
        /// the read fails or a stored row cannot be decoded.
        pub async fn published(&self, limit: i64) -> crate::Result<Vec<crate::OutboxMessage>> {
            let limit = crate::store::admin::check_limit(limit)?;
            crate::store::admin::AdminOps::select_published(self, limit).await
        }

        /// What is in the outbox now: pending messages split into ready,
        /// waiting for a retry and parked behind a blocked key, the oldest
        /// one's age, dead letters, and on PostgreSQL the table's health.
        ///
        /// # Errors
        ///
        /// [`Error::Database`](crate::Error::Database) if the query fails.
        pub async fn stats(&self) -> crate::Result<crate::StoreStats> {
            crate::store::admin::AdminOps::select_stats(self).await
        }

        /// [`stats`](Self::stats) and [`topic_stats`](Self::topic_stats)
        /// together. On PostgreSQL both come from one scan of the messages
        /// table, which each of the two reads alone: half the work of
        /// calling them one after the other on a large backlog.
        ///
        /// # Errors
        ///
        /// [`Error::Database`](crate::Error::Database) if a query fails.
        pub async fn stats_and_topics(
            &self,
        ) -> crate::Result<(crate::StoreStats, Vec<crate::TopicStats>)> {
            crate::store::admin::AdminOps::select_figures(self).await
        }

        /// Deletes retained published messages published before `before`,
        /// in batches of `batch`, oldest first; returns how many. The
        /// relay purges by itself when retention is set; this is the
        /// operator's own call (`outbox purge`).
        ///
        /// # Errors
        ///
        /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a
        /// `batch` below 1; [`Error::Database`](crate::Error::Database) if
        /// the database fails.
        pub async fn purge_published(
            &self,
            before: chrono::DateTime<chrono::Utc>,
            batch: i64,
        ) -> crate::Result<u64> {
            if batch < 1 {
                return Err(crate::Error::InvalidConfig {
                    field: "batch",
                    reason: format!("must be at least 1, not {batch}"),
                });
            }
            let mut total = 0;
            loop {
                let p = crate::store::Purge {
                    before,
                    limit: batch,
                };
                let n = crate::store::sealed::StoreOps::purge_published(self, p).await?;
                total += n;
                if (n as i64) < batch {
                    return Ok(total);
                }
            }
        }

        /// Retained published messages published at or after `since`, in
        /// the order they were published, at most `limit`: what
        /// `outbox tail` follows (read through the published time's index).
        /// Empty unless the relay retains published messages.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a
        /// negative `limit`; [`Error::Database`](crate::Error::Database) if
        /// the read fails.
        pub async fn published_since(
            &self,
            since: chrono::DateTime<chrono::Utc>,
            limit: i64,
        ) -> crate::Result<Vec<crate::PublishedMessage>> {
            let limit = crate::store::admin::check_limit(limit)?;
            crate::store::admin::AdminOps::select_published_since(self, since, limit).await
        }

        /// Pending messages per topic (count and oldest), by topic: which
        /// stream is behind. Reads the whole messages table once.
        ///
        /// # Errors
        ///
        /// [`Error::Database`](crate::Error::Database) if the query fails.
        pub async fn topic_stats(&self) -> crate::Result<Vec<crate::TopicStats>> {
            crate::store::admin::AdminOps::select_topics(self).await
        }

        /// The relays that recorded a heartbeat, with the leases each
        /// holds: who is draining this outbox, and who died holding
        /// buckets (an expired heartbeat; its leases pass to the others
        /// when they expire).
        ///
        /// # Errors
        ///
        /// [`Error::Database`](crate::Error::Database) if the query fails.
        pub async fn relays(&self) -> crate::Result<Vec<crate::RelayStatus>> {
            crate::store::admin::AdminOps::select_relays(self).await
        }
    };
}
pub(crate) use admin_api;
