//! What the relay's tests run it with: a publisher whose answers a test
//! scripts and whose calls it reads back, relays on the in-memory store,
//! and a metrics recorder that counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Relay, RelayBuilder, RelayHandle, RetryPolicy};
use crate::error::PublishError;
use crate::message::{NewMessage, OutboxMessage};
use crate::publisher::Publisher;
use crate::store::memory::{Gate, MemoryStore};

/// The answer for one message.
pub(super) type Answer = Arc<dyn Fn(&OutboxMessage) -> Result<(), PublishError> + Send + Sync>;

/// One message handed to a publisher.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub(super) relay: Uuid,
    /// The publisher call it came in (0-based, over all relays).
    pub(super) call: usize,
    pub(super) at: Instant,
    pub(super) message: OutboxMessage,
    pub(super) ok: bool,
    /// Whether the relay held the message's bucket, unexpired, in the store
    /// when the call was made.
    pub(super) held: bool,
}

/// Every publisher call of every relay of a test, answered by a script.
#[derive(Clone)]
pub(super) struct Journal {
    store: MemoryStore,
    inner: Arc<Mutex<Inner>>,
    calls: Arc<watch::Sender<usize>>,
}

struct Inner {
    sent: Vec<Sent>,
    answer: Answer,
    /// How long call `n` takes after the messages are handed over;
    /// `Duration::MAX`: it never returns.
    delay: Arc<dyn Fn(usize) -> Duration + Send + Sync>,
    /// What the publishers say of [`Publisher::keeps_key_order`].
    runs: bool,
}

impl Journal {
    /// A journal whose publishers confirm everything at once.
    pub(super) fn new(store: &MemoryStore) -> Self {
        Self {
            store: store.clone(),
            inner: Arc::new(Mutex::new(Inner {
                sent: Vec::new(),
                answer: Arc::new(|_| Ok(())),
                delay: Arc::new(|_| Duration::ZERO),
                runs: false,
            })),
            calls: Arc::new(watch::channel(0).0),
        }
    }

    pub(super) fn answer(
        &self,
        f: impl Fn(&OutboxMessage) -> Result<(), PublishError> + Send + Sync + 'static,
    ) {
        self.inner.lock().expect("poisoned").answer = Arc::new(f);
    }

    pub(super) fn delay(&self, f: impl Fn(usize) -> Duration + Send + Sync + 'static) {
        self.inner.lock().expect("poisoned").delay = Arc::new(f);
    }

    /// Makes the publishers take runs of a key in one call. They answer
    /// each message by the script all the same: a script that confirms a
    /// message after an earlier one of its key failed plays a publisher
    /// that breaks its promise.
    pub(super) fn runs(&self, on: bool) {
        self.inner.lock().expect("poisoned").runs = on;
    }

    pub(super) fn sent(&self) -> Vec<Sent> {
        self.inner.lock().expect("poisoned").sent.clone()
    }

    /// Payload tags of the messages sent and confirmed, in order.
    pub(super) fn confirmed(&self) -> Vec<String> {
        self.sent()
            .iter()
            .filter(|s| s.ok)
            .map(|s| tag(&s.message))
            .collect()
    }

    /// Waits until `n` publisher calls have been made.
    pub(super) async fn calls(&self, n: usize) {
        let mut rx = self.calls.subscribe();
        rx.wait_for(|c| *c >= n).await.expect("journal alive");
    }

    pub(super) fn publisher(&self, relay: Uuid) -> ScriptedPublisher {
        ScriptedPublisher {
            relay,
            journal: self.clone(),
        }
    }
}

/// A relay's publisher, writing to its [`Journal`].
pub(super) struct ScriptedPublisher {
    relay: Uuid,
    journal: Journal,
}

impl std::fmt::Debug for ScriptedPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedPublisher")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Publisher for ScriptedPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let j = &self.journal;
        let (results, delay) = {
            let mut inner = j.inner.lock().expect("poisoned");
            let call = *j.calls.borrow();
            let answer = inner.answer.clone();
            let mut results = Vec::new();
            for m in batch {
                let r = answer(m);
                let held = j.store.holder(j.store.bucket_of(m)) == Some(self.relay);
                inner.sent.push(Sent {
                    relay: self.relay,
                    call,
                    at: Instant::now(),
                    message: m.clone(),
                    ok: r.is_ok(),
                    held,
                });
                results.push(r);
            }
            (results, (inner.delay)(call))
        };
        j.calls.send_modify(|c| *c += 1);
        if delay == Duration::MAX {
            std::future::pending::<()>().await;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        results
    }

    fn keeps_key_order(&self) -> bool {
        self.journal.inner.lock().expect("poisoned").runs
    }
}

/// A message of topic `t` tagged `tag` (its payload), keyed if `key`.
pub(super) fn message(tag: &str, key: Option<&str>) -> NewMessage {
    let m = NewMessage::bytes("t", tag.as_bytes().to_vec());
    match key {
        Some(k) => m.with_partition_key(k),
        None => m,
    }
}

pub(super) fn tag(m: &OutboxMessage) -> String {
    String::from_utf8_lossy(m.payload()).into_owned()
}

/// Test settings: 2 s leases, 100 ms polls, retries after 100 ms doubling
/// to 1 s without jitter, dead letter at the third attempt.
pub(super) fn builder(store: MemoryStore, journal: &Journal, relay: Uuid) -> RelayBuilder {
    Relay::builder(store, journal.publisher(relay))
        .relay_id(relay)
        .lease_ttl(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(100))
        .stats_interval(Duration::from_secs(1))
        .retry(
            RetryPolicy::new()
                .initial_delay(Duration::from_millis(100))
                .max_delay(Duration::from_secs(1))
                .max_attempts(3)
                .jitter(false),
        )
}

/// A relay on `store` with the test settings as changed by `tune`.
pub(super) fn spawn(
    store: &MemoryStore,
    journal: &Journal,
    tune: impl FnOnce(RelayBuilder) -> RelayBuilder,
) -> (RelayHandle, Gate, Uuid) {
    let relay = Uuid::now_v7();
    let (handle, gate) = store.for_relay(relay);
    let running = tune(builder(handle, journal, relay))
        .spawn()
        .expect("valid test settings");
    (running, gate, relay)
}

/// Waits (on paused time: instantly) until `cond` holds; fails after
/// `limit`, naming `what`.
pub(super) async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "still not {what} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A recorder that keeps counter totals, for tests that install it on
/// their (single) thread.
#[derive(Debug, Default)]
pub(super) struct Counters {
    counters: Mutex<HashMap<String, Arc<Total>>>,
}

#[derive(Debug, Default)]
struct Total(AtomicU64);

impl metrics::CounterFn for Total {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl Counters {
    pub(super) fn get(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .expect("poisoned")
            .get(name)
            .map_or(0, |t| t.0.load(Ordering::Relaxed))
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let total = self
            .counters
            .lock()
            .expect("poisoned")
            .entry(key.name().to_owned())
            .or_default()
            .clone();
        Counter::from_arc(total)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
