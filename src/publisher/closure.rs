//! [`FnPublisher`]: a publisher made from an async closure, one message at
//! a time.

use std::fmt;
use std::future::Future;

use async_trait::async_trait;

use super::{FailedKeys, Publisher};
use crate::error::PublishError;
use crate::message::OutboxMessage;

/// A publisher made from an async closure called once per message.
///
/// The messages of a batch are sent one after another; for throughput,
/// implement [`Publisher`] and send a batch at once. It keeps a key's order
/// within a batch ([`Publisher::keeps_key_order`]): after a message fails,
/// the closure is not called for the later messages of its key in the
/// batch, which are reported as transient failures.
///
/// ```
/// use outbox::{FnPublisher, OutboxMessage, PublishError};
///
/// let publisher = FnPublisher::new(|msg: OutboxMessage| async move {
///     if msg.payload().is_empty() {
///         return Err(PublishError::permanent("empty payload"));
///     }
///     Ok(())
/// });
/// # let _ = publisher;
/// ```
pub struct FnPublisher<F> {
    f: F,
}

impl<F, Fut> FnPublisher<F>
where
    F: Fn(OutboxMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), PublishError>> + Send + 'static,
{
    /// Wraps the closure.
    pub fn new(f: F) -> Self {
        Self { f }
    }
}

impl<F> fmt::Debug for FnPublisher<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnPublisher").finish_non_exhaustive()
    }
}

#[async_trait]
impl<F, Fut> Publisher for FnPublisher<F>
where
    F: Fn(OutboxMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), PublishError>> + Send + 'static,
{
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let mut out = Vec::with_capacity(batch.len());
        let mut failed = FailedKeys::default();
        for m in batch {
            let result = match failed.held_back(m) {
                Some(e) => Err(e),
                None => (self.f)(m.clone()).await,
            };
            failed.note(m, &result);
            out.push(result);
        }
        out
    }

    fn keeps_key_order(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::store::memory::claimed;

    #[tokio::test]
    async fn nothing_more_of_a_key_is_sent_after_its_first_failure_in_a_call() {
        let batch: Vec<OutboxMessage> = [
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("b")),
            (4, Some("a")),
            (5, None),
        ]
        .into_iter()
        .map(|(seq, key)| claimed(seq, key, 0).message)
        .collect();
        let called = Arc::new(Mutex::new(Vec::new()));
        let seen = called.clone();
        let publisher = FnPublisher::new(move |m: OutboxMessage| {
            seen.lock().unwrap().push(m.position());
            async move {
                if m.position() == 2 {
                    Err(PublishError::transient("down"))
                } else {
                    Ok(())
                }
            }
        });
        assert!(publisher.keeps_key_order());
        let results = publisher.publish(&batch).await;
        let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, false, true, false, true]);
        assert_eq!(
            *called.lock().unwrap(),
            [1, 2, 3, 5],
            "4 is never handed over"
        );
        let held = results[3].as_ref().unwrap_err();
        assert!(held.is_transient());
        let why = crate::error::error_chain(held);
        assert!(why.contains("earlier message of key \"a\""), "{why}");
    }
}
