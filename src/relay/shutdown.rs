//! Shutdown: when a stop was asked for, and the deadlines it sets for the
//! publisher call in flight and for the relay's last store calls.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The longest the store calls that close a relay (the last
/// acknowledgement, giving the leases back, leaving) may run past the grace
/// period: ample for a database that answers, and far below a pool's
/// acquire timeout, which a database refusing connections would otherwise
/// make `shutdown()` wait out.
pub(super) const LAST_CALLS: Duration = Duration::from_secs(2);

/// A relay's view of its stop request. The handle sends the instant it
/// asked at, so every deadline counts from the request, not from when the
/// worker noticed it.
#[derive(Debug, Clone)]
pub(super) struct Shutdown {
    asked_at: watch::Receiver<Option<Instant>>,
    grace: Duration,
}

impl Shutdown {
    pub(super) fn new(asked_at: watch::Receiver<Option<Instant>>, grace: Duration) -> Self {
        Self { asked_at, grace }
    }

    /// Whether a stop was asked for.
    pub(super) fn requested(&self) -> bool {
        self.asked_at.borrow().is_some()
    }

    /// Resolves with the instant of the stop request, at once if it came
    /// already.
    pub(super) async fn asked(&self) -> Instant {
        let mut rx = self.asked_at.clone();
        let asked = rx.wait_for(Option::is_some).await.ok().and_then(|at| *at);
        // The handle asks before it goes, so a closed channel without a
        // request cannot happen; if it did, stopping is the safe reading.
        asked.unwrap_or_else(Instant::now)
    }

    /// Resolves when the grace period after the stop request is over: the
    /// publisher call still in flight is then abandoned.
    pub(super) async fn grace_over(&self) {
        let asked = self.asked().await;
        tokio::time::sleep_until(asked + self.grace).await;
    }

    /// Resolves when the relay's last store calls are abandoned: the grace
    /// period, then at most [`LAST_CALLS`] (and no more than the grace
    /// itself) for the calls that close the relay.
    pub(super) async fn calls_over(&self) {
        let asked = self.asked().await;
        tokio::time::sleep_until(asked + self.grace + LAST_CALLS.min(self.grace)).await;
    }

    /// Runs `f` to the end, unless a stop is asked for and the relay's last
    /// store calls are due to end first: `None` then.
    pub(super) async fn bound<F: Future>(&self, f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            () = self.calls_over() => None,
        }
    }

    /// Runs `f` unless a stop is asked for first: for calls that leave
    /// nothing to tidy up when dropped (start-up checks, a listener).
    pub(super) async fn unless_asked<F: Future>(&self, f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            _ = self.asked() => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_count_from_the_request_not_from_when_it_is_seen() {
        let (tx, rx) = watch::channel(None);
        let sd = Shutdown::new(rx, Duration::from_secs(5));
        assert!(!sd.requested());
        let asked = Instant::now();
        tx.send_replace(Some(asked));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(sd.requested());
        sd.grace_over().await;
        assert_eq!(Instant::now() - asked, Duration::from_secs(5));
        sd.calls_over().await;
        assert_eq!(Instant::now() - asked, Duration::from_secs(5) + LAST_CALLS);
        let never = sd.bound(std::future::pending::<()>()).await;
        assert_eq!(never, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_grace_keeps_the_last_calls_as_short() {
        let (tx, rx) = watch::channel(None);
        let sd = Shutdown::new(rx, Duration::from_millis(300));
        let asked = Instant::now();
        tx.send_replace(Some(asked));
        sd.calls_over().await;
        assert_eq!(Instant::now() - asked, Duration::from_millis(600));
    }
}
