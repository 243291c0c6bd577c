//! The operator's side of dead letters: the dead letter itself, filters,
//! replay reports, blocked keys, and the sweep of blocks whose message is
//! gone. Backend-neutral; each backend's `admin.rs` runs the statements.

#[cfg(any(feature = "sqlite", feature = "mysql"))]
use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::message::{MessageId, OutboxMessage};

/// A dead-lettered message: kept with its last error until replayed or
/// discarded.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The message as it was last attempted.
    pub message: OutboxMessage,
    /// How many attempts were made.
    pub attempts: i32,
    /// The last error, with its causes.
    pub last_error: String,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
}

impl DeadLetter {
    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.message.id()
    }
}

/// Which dead letters an operator lists or replays: every condition set must
/// hold; an empty filter matches every dead letter. Results come oldest
/// position first; page with [`limit`](Self::limit) and
/// [`after_position`](Self::after_position) (a keyset cursor: pass the
/// position of the last dead letter of the previous page).
///
/// ```
/// use outbox::DeadLetterFilter;
///
/// let page = DeadLetterFilter::new()
///     .topic("payroll")
///     .partition_key("candidate-42")
///     .error_contains("schema rejected")
///     .limit(50);
/// let next_page = page.clone().after_position(1234);
/// # let _ = next_page;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub(crate) id: Option<MessageId>,
    pub(crate) topic: Option<String>,
    pub(crate) partition_key: Option<String>,
    pub(crate) error_contains: Option<String>,
    pub(crate) dead_since: Option<DateTime<Utc>>,
    pub(crate) dead_before: Option<DateTime<Utc>>,
    pub(crate) after_position: Option<i64>,
    pub(crate) limit: Option<u32>,
}

impl DeadLetterFilter {
    /// Every dead letter, without a limit.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// Only dead letters of this message id (a re-enqueued id can have
        /// several).
        pub fn id(id: MessageId) => id = Some(id);

        /// Only dead letters of this topic.
        pub fn topic(topic: impl Into<String>) => topic = Some(topic.into());

        /// Only dead letters of this partition key.
        pub fn partition_key(key: impl Into<String>) => partition_key = Some(key.into());

        /// Only dead letters whose last error contains this text (case
        /// sensitive, no wildcards).
        pub fn error_contains(text: impl Into<String>) => error_contains = Some(text.into());

        /// Only dead letters dead-lettered at or after this time.
        pub fn dead_since(t: DateTime<Utc>) => dead_since = Some(t);

        /// Only dead letters dead-lettered before this time.
        pub fn dead_before(t: DateTime<Utc>) => dead_before = Some(t);

        /// Only dead letters at a position after this one: the keyset cursor
        /// of the next page.
        pub fn after_position(position: i64) => after_position = Some(position);

        /// At most this many (the oldest positions that match).
        pub fn limit(n: u32) => limit = Some(n);
    }
}

/// What a replay of dead letters did.
///
/// A dead letter goes back to the outbox only while no message with its id
/// is pending (ids are unique among pending messages), and of several dead
/// letters of one id only the oldest goes back in one call. Any other
/// dead letter that matched is left where it was, unchanged, with the
/// block it holds on its key, and listed in
/// [`not_replayed`](Self::not_replayed): replay it once the pending message
/// of its id is published, or discard it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Dead letters sent back to the outbox.
    pub replayed: u64,
    /// Dead letters that matched but stay, because a message with their id
    /// is pending (possibly the one this call replayed), oldest first.
    pub not_replayed: Vec<NotReplayed>,
}

/// A dead letter a replay left in place: see [`ReplayReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NotReplayed {
    /// The dead letter's message id, which a pending message holds.
    pub id: MessageId,
    /// The dead letter's position.
    pub position: i64,
}

/// Where the message that blocks a key is: see [`BlockedKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlockingMessage {
    /// Still pending: the relay retries it, and lifts the block when it is
    /// published.
    Retrying,
    /// In the dead letters: the block holds until the dead letter is
    /// replayed or discarded, or the block is lifted.
    Dead,
    /// Nowhere (deleted outside the crate, or orphaned by an older version
    /// that overwrote dead letters): the block holds nothing, and a relay's
    /// next claim (within about a second) sweeps it away.
    Gone,
}

/// A partition key held back behind a failed message (ordered topics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockedKey {
    /// The key whose later messages wait.
    pub partition_key: String,
    /// The position of the message that blocks it.
    pub position: i64,
    /// When the block was set.
    pub since: DateTime<Utc>,
    /// Where that message is now.
    pub message: BlockingMessage,
}

/// How often a claim path sweeps away key blocks whose message is gone.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) const GONE_BLOCK_SWEEP: Duration = Duration::from_secs(1);

/// When an outbox last swept away key blocks whose message is gone.
///
/// A block holds its key only while the message it names exists (pending,
/// or dead). The crate's own paths lift a block whenever its message leaves
/// (published after a retry, replayed, discarded); a block can lose its
/// message only outside them: rows deleted by hand, or a block orphaned by
/// a version that overwrote dead letters. Such blocks are swept, at most
/// once per [`GONE_BLOCK_SWEEP`] per outbox, by one small statement run
/// beside a claim, rather than checked inside the claim: an existence test
/// in the claim's anti-join changes its plan (measured on PostgreSQL 15
/// with 100,000 pending messages: 50 blocked keys turn the per-row index
/// probe into a nested loop over every block, 4 ms instead of 1 ms, and
/// 2,000 a hash anti-join over the whole table and a sort, 44 ms instead
/// of 2 ms), so every claim would pay for a rare case.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
#[derive(Debug)]
pub(crate) struct BlockSweep {
    next: std::sync::Mutex<Option<std::time::Instant>>,
}

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
impl BlockSweep {
    pub(crate) fn new() -> Self {
        Self {
            next: std::sync::Mutex::new(None),
        }
    }

    /// Whether a sweep is due now; if so, the next one is due a period
    /// later (a failed sweep is simply tried again then).
    pub(crate) fn due(&self) -> bool {
        let now = std::time::Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if next.is_some_and(|n| now < n) {
            return false;
        }
        *next = Some(now + GONE_BLOCK_SWEEP);
        true
    }
}

/// Where a blocked key's message is, from the word the `blocked_keys`
/// statements give: `retrying`, `dead` or `gone`.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) fn blocking_message(word: &str) -> BlockingMessage {
    match word {
        "retrying" => BlockingMessage::Retrying,
        "dead" => BlockingMessage::Dead,
        _ => BlockingMessage::Gone,
    }
}

/// Logs the dead letters a replay of every dead letter left in place: the
/// caller gets only a count, and they must not go unnoticed.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) fn warn_not_replayed(report: &ReplayReport) {
    if let Some(first) = report.not_replayed.first() {
        tracing::warn!(
            left = report.not_replayed.len(),
            first_id = %first.id,
            first_position = first.position,
            "dead letters left in place: a message with their id is pending"
        );
    }
}

/// The positions a replay sends back, from its candidates (position, id)
/// in position order: the oldest dead letter of each id.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn first_of_each_id(candidates: &[(i64, MessageId)]) -> Vec<i64> {
    let mut seen = HashSet::new();
    candidates
        .iter()
        .filter(|(_, id)| seen.insert(*id))
        .map(|(position, _)| *position)
        .collect()
}

/// The report of a replay whose candidates (position, id) matched and of
/// which the positions `inserted` went back to the outbox.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn replay_report(candidates: &[(i64, MessageId)], inserted: &[i64]) -> ReplayReport {
    let inserted: HashSet<i64> = inserted.iter().copied().collect();
    ReplayReport {
        replayed: inserted.len() as u64,
        not_replayed: candidates
            .iter()
            .filter(|(position, _)| !inserted.contains(position))
            .map(|&(position, id)| NotReplayed { id, position })
            .collect(),
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    /// The first claim sweeps; the next sweep waits a period.
    #[test]
    fn gone_blocks_are_swept_at_most_once_a_period() {
        let sweep = BlockSweep::new();
        assert!(sweep.due());
        assert!(!sweep.due());
        *sweep.next.lock().unwrap() = Some(std::time::Instant::now());
        assert!(sweep.due());
    }

    /// Of several dead letters of one id only the oldest is offered, and
    /// every candidate that did not go back is reported, oldest first.
    #[test]
    fn a_replay_offers_one_dead_letter_per_id_and_reports_the_rest() {
        let (a, b, c) = (MessageId::new(), MessageId::new(), MessageId::new());
        let candidates = [(1, a), (2, b), (3, a), (4, c), (5, a)];
        assert_eq!(first_of_each_id(&candidates), vec![1, 2, 4]);
        // b's id was pending: only 1 and 4 went back.
        let report = replay_report(&candidates, &[1, 4]);
        assert_eq!(report.replayed, 2);
        let left: Vec<(i64, MessageId)> = report
            .not_replayed
            .iter()
            .map(|n| (n.position, n.id))
            .collect();
        assert_eq!(left, vec![(2, b), (3, a), (5, a)]);
    }
}
