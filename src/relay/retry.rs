//! [`RetryPolicy`]: attempts, exponential backoff with jitter, and when a
//! failure becomes a dead letter.

use std::time::Duration;

use crate::error::{Error, Result};

/// When to try a failed message again, and when to give up.
///
/// Attempt `n` (1-based) that fails transiently waits
/// `min(max_delay, initial_delay * multiplier^(n-1))`, with "equal jitter":
/// a random point in the upper half of that delay, so relays that failed
/// together do not retry together. After `max_attempts` attempts the
/// message is dead-lettered. A publisher's
/// [`retry_after`](crate::PublishError::with_retry_after) replaces the
/// computed delay.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub(crate) initial_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) multiplier: f64,
    pub(crate) max_attempts: u32,
    pub(crate) jitter: bool,
}

/// The longest wait between two attempts, also for a destination's
/// `Retry-After`.
pub(crate) const MAX_RETRY_DELAY: Duration = Duration::from_secs(30 * 86_400);

impl Default for RetryPolicy {
    /// 1 s, doubling, capped at 5 min, jittered, 10 attempts (about 17
    /// minutes from first failure to dead letter).
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            multiplier: 2.0,
            max_attempts: 10,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// Delay after the first failure.
        pub fn initial_delay(d: Duration) => initial_delay = d;

        /// Cap on any computed delay.
        pub fn max_delay(d: Duration) => max_delay = d;

        /// Growth factor per attempt (at least 1).
        pub fn multiplier(m: f64) => multiplier = m;

        /// Attempts before a message is dead-lettered (at least 1).
        pub fn max_attempts(n: u32) => max_attempts = n;

        /// Turns jitter on or off (on by default; off gives exact delays).
        pub fn jitter(on: bool) => jitter = on;
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.max_attempts == 0 {
            return bad("retry.max_attempts", "must be at least 1");
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return bad("retry.multiplier", "must be a finite number >= 1");
        }
        if self.initial_delay > self.max_delay {
            return bad("retry.initial_delay", "must not exceed retry.max_delay");
        }
        if self.max_delay > MAX_RETRY_DELAY {
            return bad("retry.max_delay", "must not exceed 30 days");
        }
        Ok(())
    }

    /// The delay after failed attempt `attempt` (1-based), before jitter.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.powi(exp);
        let cap = self.max_delay.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(cap) } else { cap })
    }

    pub(crate) fn jittered_delay(&self, attempt: u32) -> Duration {
        let d = self.delay_for(attempt);
        if self.jitter {
            d / 2 + d.mul_f64(fastrand::f64() / 2.0)
        } else {
            d
        }
    }

    pub(crate) fn gives_up_after(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let p = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1))
            .jitter(false);
        let got: Vec<_> = (1..=6).map(|a| p.delay_for(a).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay_for(10_000), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let p = RetryPolicy::new().initial_delay(Duration::from_secs(8));
        for _ in 0..1000 {
            let d = p.jittered_delay(1);
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
                "{d:?}"
            );
        }
    }

    #[test]
    fn bad_values_are_named() {
        let e = RetryPolicy::new().max_attempts(0).validate().unwrap_err();
        assert!(e.to_string().contains("retry.max_attempts"), "{e}");
        let e = RetryPolicy::new().multiplier(0.5).validate().unwrap_err();
        assert!(e.to_string().contains("retry.multiplier"), "{e}");
    }
}
