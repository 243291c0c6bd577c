//! The relay's clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Wall-clock time derived from tokio's clock, so retry schedules follow
/// paused time in tests and never jump with the system clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    wall: DateTime<Utc>,
    at: Instant,
}

impl Clock {
    pub(super) fn new() -> Self {
        Self {
            wall: Utc::now(),
            at: Instant::now(),
        }
    }

    pub(super) fn now(&self) -> DateTime<Utc> {
        let elapsed = Instant::now().saturating_duration_since(self.at);
        self.wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }

    /// The instant at which tokio's clock reaches `t`; times already past
    /// map to the clock's start.
    pub(super) fn instant_of(&self, t: DateTime<Utc>) -> Instant {
        let d = (t - self.wall).to_std().unwrap_or(Duration::ZERO);
        self.at + d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time_both_ways() {
        let clock = Clock::new();
        let start = clock.now();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now() - start, chrono::Duration::seconds(90));
        let later = start + chrono::Duration::seconds(30);
        assert_eq!(
            clock.instant_of(later),
            clock.at + Duration::from_secs(30),
            "a wall time maps back to the instant it was reached"
        );
        let earlier = start - chrono::Duration::seconds(30);
        assert_eq!(clock.instant_of(earlier), clock.at);
    }
}
