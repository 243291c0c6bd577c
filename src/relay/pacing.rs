//! A backlog's pace in a relay group: while other members have fresh
//! messages, a member draining a backlog spends only its share of the time
//! in rounds, so its claims and acknowledgements leave the database (and
//! the process) room for theirs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How recent another member's light round must be for a backlog to pause.
const FRESH_WITHIN: Duration = Duration::from_secs(1);
/// The longest pause after one round.
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Shared by a group's members.
#[derive(Debug)]
pub(crate) struct Pacing {
    epoch: Instant,
    /// When a member last finished a light round (one that published
    /// something and emptied its queue), in microseconds since `epoch`,
    /// plus one; 0: never.
    last_light: AtomicU64,
    /// The share of time a backlog spends in rounds while others are
    /// active, in (0, 1].
    share: f64,
}

impl Pacing {
    pub(crate) fn new(share: f64) -> Self {
        Self {
            epoch: Instant::now(),
            last_light: AtomicU64::new(0),
            share,
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_micros())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// A member finished a light round.
    pub(crate) fn light_round(&self) {
        self.last_light
            .fetch_max(self.micros(Instant::now()), Ordering::Relaxed);
    }

    /// The pause after a full round (a backlog) that took `took`: none
    /// unless another member finished a light round in the last second;
    /// otherwise long enough that rounds fill the member's share of the
    /// time, at most half a second.
    pub(crate) fn pause_after_full(&self, took: Duration) -> Duration {
        let last = self.last_light.load(Ordering::Relaxed);
        if last == 0 || self.share >= 1.0 {
            return Duration::ZERO;
        }
        let since = self.micros(Instant::now()).saturating_sub(last);
        if Duration::from_micros(since) > FRESH_WITHIN {
            return Duration::ZERO;
        }
        took.mul_f64((1.0 - self.share) / self.share).min(MAX_PAUSE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_backlog_pauses_only_while_others_have_fresh_messages() {
        let pacing = Pacing::new(0.25);
        let took = Duration::from_millis(20);
        assert_eq!(pacing.pause_after_full(took), Duration::ZERO, "alone");
        pacing.light_round();
        assert_eq!(pacing.pause_after_full(took), Duration::from_millis(60));
        assert_eq!(
            pacing.pause_after_full(Duration::from_secs(1)),
            MAX_PAUSE,
            "bounded"
        );
        tokio::time::advance(FRESH_WITHIN + Duration::from_millis(1)).await;
        assert_eq!(
            pacing.pause_after_full(took),
            Duration::ZERO,
            "others went quiet"
        );
        let whole = Pacing::new(1.0);
        whole.light_round();
        assert_eq!(whole.pause_after_full(took), Duration::ZERO);
    }
}
