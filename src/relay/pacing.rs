//! A backlog's pace in a relay group: while other members have fresh
//! messages, a member draining a backlog spends only its share of the time
//! in rounds, so its claims and acknowledgements leave the database (and
//! the process) room for theirs.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

/// How recent another member's light round must be for a backlog to pause.
const FRESH_WITHIN: Duration = Duration::from_secs(1);
/// The longest pause after one round.
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Shared by a group's members.
#[derive(Debug)]
pub(crate) struct Pacing {
    /// The last light rounds (rounds that claimed something and left
    /// nothing behind) of the two members that finished one last, each
    /// with when it ended: a member pauses for another's, never its own.
    light: Mutex<[Option<(Uuid, Instant)>; 2]>,
    /// The share of time a backlog spends in rounds while others are
    /// active, in (0, 1].
    share: f64,
}

impl Pacing {
    pub(crate) fn new(share: f64) -> Self {
        Self {
            light: Mutex::new([None, None]),
            share,
        }
    }

    fn light(&self) -> std::sync::MutexGuard<'_, [Option<(Uuid, Instant)>; 2]> {
        // Two plain values, each written whole: a panic cannot leave them
        // half-changed.
        self.light.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Member `member` finished a light round.
    pub(crate) fn light_round(&self, member: Uuid) {
        let now = Instant::now();
        let mut light = self.light();
        if light[0].is_some_and(|(m, _)| m == member) {
            light[0] = Some((member, now));
        } else {
            light[1] = light[0];
            light[0] = Some((member, now));
        }
    }

    /// The pause after a full round (a backlog) of `member` that took
    /// `took`: none unless another member finished a light round in the
    /// last second; otherwise long enough that rounds fill the member's
    /// share of the time, at most half a second.
    pub(crate) fn pause_after_full(&self, member: Uuid, took: Duration) -> Duration {
        if self.share >= 1.0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let others_active = self
            .light()
            .iter()
            .flatten()
            .any(|(m, at)| *m != member && now.duration_since(*at) <= FRESH_WITHIN);
        if !others_active {
            return Duration::ZERO;
        }
        let secs = took.as_secs_f64() * (1.0 - self.share) / self.share;
        Duration::from_secs_f64(secs.min(MAX_PAUSE.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_backlog_pauses_only_while_other_members_have_fresh_messages() {
        let pacing = Pacing::new(0.25);
        let (backlog, other, third) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let took = Duration::from_millis(20);
        assert_eq!(
            pacing.pause_after_full(backlog, took),
            Duration::ZERO,
            "alone"
        );
        pacing.light_round(backlog);
        assert_eq!(
            pacing.pause_after_full(backlog, took),
            Duration::ZERO,
            "its own light rounds do not count"
        );
        pacing.light_round(other);
        assert_eq!(
            pacing.pause_after_full(backlog, took),
            Duration::from_millis(60)
        );
        assert_eq!(
            pacing.pause_after_full(other, took),
            Duration::from_millis(60),
            "the other member sees the backlog's light round"
        );
        assert_eq!(
            pacing.pause_after_full(backlog, Duration::from_secs(1)),
            MAX_PAUSE,
            "bounded"
        );
        pacing.light_round(third);
        pacing.light_round(third);
        assert_eq!(
            pacing.pause_after_full(third, took),
            Duration::from_millis(60),
            "a member's repeated light rounds keep the other one's"
        );
        tokio::time::advance(FRESH_WITHIN + Duration::from_millis(1)).await;
        assert_eq!(
            pacing.pause_after_full(backlog, took),
            Duration::ZERO,
            "the others went quiet"
        );
        let whole = Pacing::new(1.0);
        whole.light_round(other);
        assert_eq!(whole.pause_after_full(backlog, took), Duration::ZERO);
        let tiny = Pacing::new(f64::MIN_POSITIVE);
        tiny.light_round(other);
        assert_eq!(
            tiny.pause_after_full(backlog, Duration::from_secs(1)),
            MAX_PAUSE
        );
    }
}
