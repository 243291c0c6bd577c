//! Acknowledgements run again when the database rolled them back to break
//! a deadlock: with the upkeep's unparking, other relays' fences and lease
//! moves, and producers' inserts. Nothing of a rolled-back attempt remains
//! and the fence is checked again, so a retry is the acknowledgement
//! itself; one given up instead would have its batch published again.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};

/// How many times an acknowledgement chosen as a deadlock's victim runs,
/// in all.
pub(crate) const ATTEMPTS: u32 = 5;

/// Runs `once` until it succeeds, fails otherwise than by `deadlocked`, or
/// has run [`ATTEMPTS`] times; between attempts it pauses a few random
/// milliseconds, apart from the other side, which runs on meanwhile.
pub(crate) async fn retried<T, F, Fut>(deadlocked: fn(&Error) -> bool, mut once: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match once().await {
            Err(e) if attempt < ATTEMPTS && deadlocked(&e) => {
                tracing::warn!(
                    attempt,
                    "outbox: acknowledgement deadlocked; running it again"
                );
                let pause = fastrand::u64(1..=10 * u64::from(attempt));
                tokio::time::sleep(Duration::from_millis(pause)).await;
                attempt += 1;
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn is_timeout(e: &Error) -> bool {
        matches!(e, Error::Database(sqlx::Error::PoolTimedOut))
    }

    #[tokio::test]
    async fn runs_again_only_on_a_deadlock_and_at_most_attempts_times() {
        let runs = AtomicU32::new(0);
        let r: Result<()> = retried(is_timeout, || async {
            runs.fetch_add(1, Ordering::Relaxed);
            Err(Error::Database(sqlx::Error::PoolTimedOut))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(runs.load(Ordering::Relaxed), ATTEMPTS);

        let runs = AtomicU32::new(0);
        let r: Result<u32> = retried(is_timeout, || async {
            match runs.fetch_add(1, Ordering::Relaxed) {
                0 => Err(Error::Database(sqlx::Error::PoolTimedOut)),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(r.unwrap(), 1, "the second run's result");

        let runs = AtomicU32::new(0);
        let r: Result<()> = retried(is_timeout, || async {
            runs.fetch_add(1, Ordering::Relaxed);
            Err(Error::Database(sqlx::Error::RowNotFound))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(
            runs.load(Ordering::Relaxed),
            1,
            "another error is not run again"
        );
    }
}
