//! One call to the publisher, made in its own task while the leases are
//! kept alive, with its results held to the publisher's contract, and
//! abandoned when it outlives its lease or the shutdown grace period.

use std::any::Any;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use super::worker::Worker;
use crate::error::{error_chain, PublishError, Result};
use crate::message::OutboxMessage;
use crate::store::Lease;
use crate::trace::PublishSpans;

/// What became of a publisher call.
#[derive(Debug)]
pub(super) enum Call {
    /// It returned: exactly one result per message.
    Returned(Vec<Result<(), PublishError>>),
    /// It was abandoned: its messages get no acknowledgement and stay
    /// pending, and its results, should it return, are never read.
    Abandoned,
}

/// A publisher call's task; aborted when dropped, so an abandoned call
/// stops at its next await and its results go nowhere.
struct InFlight(JoinHandle<Vec<Result<(), PublishError>>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often a long publisher call looks in on the maintenance passes.
const UPKEEP_CHECK: Duration = Duration::from_secs(1);

type Renewal = Pin<Box<dyn Future<Output = (Instant, Result<Vec<Lease>>)> + Send>>;

impl Worker {
    /// Calls the publisher with a wave whose messages lie in `buckets`,
    /// renewing the leases while it works, so a slow destination does not
    /// cost the relay its keys. A relay that is truly stalled renews
    /// nothing, and its leases expire as they should.
    ///
    /// The call is abandoned when the local deadline of the leases it was
    /// made under passes (renewals failed, hung, or found a bucket taken):
    /// another relay may own those keys by then and publish their later
    /// messages, which this call must not land behind as if acknowledged.
    /// It is abandoned too when the shutdown grace period is over.
    ///
    /// The call runs in its own task, so a publisher that panics fails its
    /// batch (transiently) instead of taking the relay down.
    pub(super) async fn publish_renewing(
        &mut self,
        mut batch: Vec<OutboxMessage>,
        buckets: &HashSet<i32>,
    ) -> Call {
        let spans = PublishSpans::open(&mut batch, self.config.trace_link);
        let call = self.call_renewing(batch, buckets).await;
        spans.close(match &call {
            Call::Returned(results) => Some(results),
            Call::Abandoned => None,
        });
        // What the publisher said (an abandoned call said nothing): any
        // success clears the failing state, a call that failed whole
        // (re)starts it.
        if let Call::Returned(results) = &call {
            if results.iter().any(Result::is_ok) {
                self.publish_failure = None;
            } else if let Some(Err(e)) = results.first() {
                self.publish_failure = Some((Instant::now(), error_chain(e)));
            }
        }
        call
    }

    /// [`publish_renewing`](Self::publish_renewing) without the spans.
    async fn call_renewing(&mut self, batch: Vec<OutboxMessage>, buckets: &HashSet<i32>) -> Call {
        let publisher = self.publisher.clone();
        let n = batch.len();
        let mut call = InFlight(tokio::spawn(async move { publisher.publish(&batch).await }));
        let ttl = self.config.lease_ttl;
        let shutdown = self.shutdown.clone();
        // The deadline of the leases this call was made under, moved on
        // only by renewals that kept every one of them.
        let mut deadline = self.lease_deadline;
        let mut renew_at = Instant::now() + ttl / 3;
        let mut renewal: Option<Renewal> = None;
        // Gauges keep moving while a call takes long: a stuck destination
        // must show as a growing backlog, not as its last reading.
        let upkeep_every = self.config.stats_interval.min(UPKEEP_CHECK);
        let mut upkeep_at = Instant::now() + upkeep_every;
        loop {
            tokio::select! {
                // Deadlines first: a result that comes as late as they do
                // is not trusted to have landed in time.
                biased;
                () = tokio::time::sleep_until(deadline) => {
                    return self.abandon(n, "the lease it was made under ran out", "lease");
                }
                () = shutdown.grace_over() => {
                    return self.abandon(n, "the shutdown grace period is over", "shutdown");
                }
                joined = &mut call.0 => {
                    // Timers that ran out together fire in no set order (a
                    // process frozen past its deadline wakes to both): the
                    // clock decides.
                    if Instant::now() >= deadline {
                        return self.abandon(n, "it returned after its lease ran out", "lease");
                    }
                    let results = self.results_of(joined, n);
                    return Call::Returned(one_result_each(results, n));
                }
                (started, kept) = async { renewal.as_mut().expect("guarded").await },
                    if renewal.is_some() =>
                {
                    renewal = None;
                    if let Err(e) = self.take_renewal(started, kept) {
                        tracing::warn!(
                            error = %error_chain(&e),
                            "outbox relay: lease renewal during publish failed"
                        );
                    }
                    let held: HashSet<i32> = self.leases.iter().map(|l| l.bucket).collect();
                    if buckets.is_subset(&held) {
                        deadline = self.lease_deadline;
                    }
                    renew_at = Instant::now() + ttl / 3;
                }
                () = tokio::time::sleep_until(renew_at), if renewal.is_none() => {
                    renewal = Some(Box::pin(self.renewal()));
                }
                () = tokio::time::sleep_until(upkeep_at) => {
                    self.collect_maintenance().await;
                    self.start_maintenance();
                    upkeep_at = Instant::now() + upkeep_every;
                }
            }
        }
    }

    fn abandon(&mut self, n: usize, why: &str, reason: &'static str) -> Call {
        tracing::warn!(
            relay = %self.config.relay_id,
            messages = n,
            "outbox relay: abandoning a publisher call: {why}; its messages stay \
             pending and are published again by the owner of their buckets"
        );
        metrics::counter!(
            "outbox_abandoned_calls_total",
            self.config.labels.with("reason", reason)
        )
        .increment(1);
        // Claimed under leases that may be gone.
        self.prefetch = None;
        Call::Abandoned
    }

    /// The results of a finished call; a panic fails every message
    /// transiently and is logged once, here.
    fn results_of(
        &self,
        joined: std::result::Result<Vec<Result<(), PublishError>>, JoinError>,
        n: usize,
    ) -> Vec<Result<(), PublishError>> {
        match joined {
            Ok(results) => results,
            Err(e) => {
                let why = match e.try_into_panic() {
                    Ok(payload) => panic_message(payload.as_ref()),
                    Err(e) => e.to_string(),
                };
                tracing::error!(
                    relay = %self.config.relay_id,
                    panic = %why,
                    "outbox relay: the publisher panicked; its messages are retried"
                );
                (0..n)
                    .map(|_| {
                        Err(PublishError::transient(format!(
                            "the publisher panicked: {why}"
                        )))
                    })
                    .collect()
            }
        }
    }
}

/// The message a panic was raised with, when it has one.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Holds a publisher to one result per message: missing results count as
/// transient failures, extra ones are dropped.
pub(super) fn one_result_each(
    mut results: Vec<Result<(), PublishError>>,
    n: usize,
) -> Vec<Result<(), PublishError>> {
    if results.len() != n {
        tracing::error!(
            expected = n,
            got = results.len(),
            "outbox relay: publisher returned the wrong number of results; \
             treating the missing ones as transient failures"
        );
        results.resize_with(n, || {
            Err(PublishError::transient(
                "publisher returned no result for this message",
            ))
        });
        results.truncate(n);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_results_are_transient_failures_and_extra_ones_are_dropped() {
        let short = one_result_each(vec![Ok(())], 3);
        assert_eq!(short.len(), 3);
        assert!(short[0].is_ok());
        assert!(short[1..]
            .iter()
            .all(|r| r.as_ref().is_err_and(PublishError::is_transient)));
        let long = one_result_each(vec![Ok(()), Err(PublishError::permanent("no")), Ok(())], 1);
        assert_eq!(long.len(), 1);
        assert!(long[0].is_ok());
    }

    #[test]
    fn a_panic_is_named_by_its_message() {
        let from_str: Box<dyn Any + Send> = Box::new("boom");
        assert_eq!(panic_message(from_str.as_ref()), "boom");
        let from_format: Box<dyn Any + Send> = Box::new(format!("boom {}", 2));
        assert_eq!(panic_message(from_format.as_ref()), "boom 2");
        let other: Box<dyn Any + Send> = Box::new(7_u8);
        assert_eq!(panic_message(other.as_ref()), "(no message)");
    }
}
