//! One call to the publisher, made in its own task while the leases are
//! kept alive, with its results held to the publisher's contract.

use tokio::time::Instant;

use super::worker::Worker;
use crate::error::PublishError;
use crate::message::OutboxMessage;

impl Worker {
    /// Calls the publisher, renewing the leases while it works, so a slow
    /// destination does not cost the relay its keys. A relay that is truly
    /// stalled renews nothing, and its leases expire as they should.
    ///
    /// The call runs in its own task, so a publisher that panics fails its
    /// batch (transiently) instead of taking the relay down.
    ///
    /// Returns exactly one result per message.
    pub(super) async fn publish_renewing(
        &mut self,
        batch: Vec<OutboxMessage>,
    ) -> Vec<Result<(), PublishError>> {
        let publisher = self.publisher.clone();
        let n = batch.len();
        let publish = tokio::spawn(async move { publisher.publish(&batch).await });
        let publish = async move {
            match publish.await {
                Ok(results) => results,
                Err(e) => {
                    tracing::error!(error = %e, "outbox relay: the publisher panicked");
                    (0..n)
                        .map(|_| Err(PublishError::transient("the publisher panicked")))
                        .collect()
                }
            }
        };
        tokio::pin!(publish);
        let ttl = self.config.lease_ttl;
        loop {
            let renew_at = Instant::now() + ttl / 3;
            tokio::select! {
                results = &mut publish => return one_result_each(results, n),
                _ = tokio::time::sleep_until(renew_at) => self.renew_while_publishing().await,
            }
        }
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
}
