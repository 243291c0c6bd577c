//! [`InMemoryPublisher`]: keeps what it is given, for tests.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::Publisher;
use crate::error::PublishError;
use crate::message::OutboxMessage;

/// Keeps every published message in memory and optionally forwards it to a
/// channel. For tests of code that uses the outbox: assert on
/// [`messages`](Self::messages) or await the [`channel`](Self::channel).
///
/// Cloning gives another handle to the same store.
#[derive(Debug, Clone, Default)]
pub struct InMemoryPublisher {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    published: Mutex<Vec<OutboxMessage>>,
    senders: Mutex<Vec<mpsc::UnboundedSender<OutboxMessage>>>,
}

impl InMemoryPublisher {
    /// An empty publisher.
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver that gets every message published from now on.
    pub fn channel(&self) -> mpsc::UnboundedReceiver<OutboxMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.senders.lock().expect("poisoned").push(tx);
        rx
    }

    /// Every message published so far, in publish order (redeliveries
    /// included).
    pub fn messages(&self) -> Vec<OutboxMessage> {
        self.inner.published.lock().expect("poisoned").clone()
    }

    /// How many messages were published so far.
    pub fn len(&self) -> usize {
        self.inner.published.lock().expect("poisoned").len()
    }

    /// True if nothing was published yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Publisher for InMemoryPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let mut published = self.inner.published.lock().expect("poisoned");
        let mut senders = self.inner.senders.lock().expect("poisoned");
        for m in batch {
            published.push(m.clone());
            senders.retain(|s| s.send(m.clone()).is_ok());
        }
        batch.iter().map(|_| Ok(())).collect()
    }

    /// Every message is kept, in batch order: runs of a key arrive in order.
    fn keeps_key_order(&self) -> bool {
        true
    }
}
