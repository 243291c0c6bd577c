//! [`FnPublisher`]: a publisher made from an async closure, one message at
//! a time.

use std::fmt;
use std::future::Future;

use async_trait::async_trait;

use super::Publisher;
use crate::error::PublishError;
use crate::message::OutboxMessage;

/// A publisher made from an async closure called once per message.
///
/// The messages of a batch are sent one after another; for throughput,
/// implement [`Publisher`] and send a batch at once.
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
        for m in batch {
            out.push((self.f)(m.clone()).await);
        }
        out
    }
}
