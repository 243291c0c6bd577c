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

/// `period`, spread at random over 3/4 to 5/4 of it: relays started
/// together (a group's members) drift apart instead of running their
/// periodic passes at the same moments.
pub(super) fn spread(period: Duration) -> Duration {
    period.mul_f64(0.75 + fastrand::f64() / 2.0)
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

    #[test]
    fn spread_periods_vary_within_a_quarter_either_way() {
        let period = Duration::from_secs(4);
        let spread: Vec<Duration> = (0..200).map(|_| spread(period)).collect();
        assert!(spread
            .iter()
            .all(|d| *d >= Duration::from_secs(3) && *d <= Duration::from_secs(5)));
        let (lo, hi) = (spread.iter().min().unwrap(), spread.iter().max().unwrap());
        assert!(
            *hi - *lo > Duration::from_secs(1),
            "{lo:?}..{hi:?}: not spread"
        );
    }
}
