//! A publisher that fails at random, before and after delivering, and what
//! its consumer saw: the chaos of the ordering tests.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox::{MessageId, OutboxMessage, PublishError, Publisher, RelayBuilder};

use crate::backend::TestOutbox;
use crate::ordering::fast_retry;

/// What a consumer saw, in arrival order.
#[derive(Default)]
pub(crate) struct Received {
    pub(crate) log: Mutex<Vec<MessageId>>,
    /// Messages the destination kept although the publisher reported a
    /// failure, or delivered by a call that never returned (the relay
    /// abandoned it when its lease ran out, and the bucket's next owner
    /// publishes them again): the only ones allowed to arrive twice.
    pub(crate) ambiguous: Mutex<HashSet<MessageId>>,
    /// The per-key number each delivery carried.
    pub(crate) numbers: Mutex<Vec<(MessageId, i64)>>,
    /// The most messages of one key a publisher call was given.
    pub(crate) longest_run: std::sync::atomic::AtomicUsize,
}

/// Fails about 5 % of messages before delivering them and about 1 % after
/// (the broker kept the message, the confirmation was lost). With `runs`
/// it takes several messages of a key per call, and after a key's failure
/// delivers nothing more of the key in the call, as its promise says
/// ([`Publisher::keeps_key_order`]).
struct ChaosPublisher {
    received: Arc<Received>,
    rng: Mutex<fastrand::Rng>,
    runs: bool,
}

/// The messages a publisher call has delivered so far; should the call be
/// dropped before it returns (an abandoned call is aborted), they count as
/// ambiguous.
struct InFlight<'a> {
    received: &'a Received,
    delivered: Vec<MessageId>,
    returned: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.returned {
            let mut ambiguous = self.received.ambiguous.lock().unwrap();
            ambiguous.extend(self.delivered.iter().copied());
        }
    }
}

#[async_trait]
impl Publisher for ChaosPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let mut call = InFlight {
            received: &self.received,
            delivered: Vec::new(),
            returned: false,
        };
        let mut out = Vec::with_capacity(batch.len());
        let mut failed_keys: HashSet<&str> = HashSet::new();
        let mut per_key: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for k in batch.iter().filter_map(|m| m.partition_key()) {
            let n = per_key.entry(k).or_default();
            *n += 1;
            self.received
                .longest_run
                .fetch_max(*n, std::sync::atomic::Ordering::Relaxed);
        }
        for m in batch {
            if m.partition_key().is_some_and(|k| failed_keys.contains(k)) {
                out.push(Err(PublishError::transient(std::io::Error::other(
                    "held back behind its key's failure",
                ))));
                continue;
            }
            let r = self.rng.lock().unwrap().f64();
            if r < 0.06 {
                if let Some(k) = m.partition_key() {
                    failed_keys.insert(k);
                }
            }
            if r < 0.05 {
                out.push(Err(PublishError::transient(std::io::Error::other(
                    "broker busy",
                ))));
                continue;
            }
            self.received.log.lock().unwrap().push(m.id());
            call.delivered.push(m.id());
            self.received.numbers.lock().unwrap().push((
                m.id(),
                m.key_sequence().expect("keyed messages are numbered"),
            ));
            if r < 0.06 {
                self.received.ambiguous.lock().unwrap().insert(m.id());
                out.push(Err(PublishError::transient(std::io::Error::other(
                    "confirmation lost",
                ))));
            } else {
                out.push(Ok(()));
            }
        }
        // The broker's confirmations come back: a relay that stalled past
        // its lease abandons the call here, and its deliveries count as
        // ambiguous.
        tokio::task::yield_now().await;
        call.returned = true;
        out
    }

    fn keeps_key_order(&self) -> bool {
        self.runs
    }
}

/// A relay whose [`ChaosPublisher`] draws from seed `seed`; per-key
/// numbers on, polling every 20 ms.
pub(crate) fn chaos_relay<O: TestOutbox>(
    outbox: &O,
    received: &Arc<Received>,
    seed: u64,
) -> RelayBuilder {
    chaos_relay_taking_runs(outbox, received, seed, false)
}

/// [`chaos_relay`], whose publisher takes runs of a key if `runs`.
pub(crate) fn chaos_relay_taking_runs<O: TestOutbox>(
    outbox: &O,
    received: &Arc<Received>,
    seed: u64,
    runs: bool,
) -> RelayBuilder {
    outbox
        .relay(ChaosPublisher {
            received: received.clone(),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            runs,
        })
        .poll_interval(Duration::from_millis(20))
        .key_sequences(true)
        .retry(fast_retry())
}
