//! A publisher wrapper that counts, times and records what it is asked to
//! publish, and can pretend acknowledgements were lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use outbox::{OutboxMessage, PublishError, Publisher};

/// Counts what the inner publisher is asked and how often it fails; can
/// pretend the first acknowledgement of each message was lost.
pub struct Probe<P> {
    pub inner: P,
    pub calls: Arc<AtomicU64>,
    pub failures: Arc<AtomicU64>,
    /// Nanoseconds spent inside the inner publisher.
    pub busy: Arc<AtomicU64>,
    pub lose_first_ack: bool,
    pub seen: Arc<Mutex<Vec<OutboxMessage>>>,
}

impl<P> Probe<P> {
    pub fn new(inner: P) -> Self {
        Probe {
            inner,
            calls: Arc::default(),
            failures: Arc::default(),
            busy: Arc::default(),
            lose_first_ack: false,
            seen: Arc::default(),
        }
    }
}

#[async_trait]
impl<P: Publisher> Publisher for Probe<P> {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        self.calls.fetch_add(batch.len() as u64, Ordering::SeqCst);
        self.seen.lock().unwrap().extend(batch.iter().cloned());
        let started = std::time::Instant::now();
        let mut results = self.inner.publish(batch).await;
        self.busy
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::SeqCst);
        for (m, r) in batch.iter().zip(results.iter_mut()) {
            if r.is_ok() && self.lose_first_ack && m.attempt() == 1 {
                *r = Err(PublishError::transient("acknowledgement lost (simulated)"));
            }
            if r.is_err() {
                self.failures.fetch_add(1, Ordering::SeqCst);
            }
        }
        results
    }
}
