//! The scenarios every broker publisher (NATS JetStream, RabbitMQ, Redis
//! Streams) passes, stated once; each broker's test file runs them against
//! its real server through a [`TestBroker`].

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use outbox::{MessageId, NewMessage, OutboxMessage, Publisher, Relay, SqliteOutbox};

use super::probe::Probe;
use super::sqlite::{drained, enqueue, migrated, pending, relay_until_drained, TempDb};
use super::{fast_retry, wait_for, Proxy};

/// How long a scenario waits for the relay or the broker.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A destination of one test on a real broker, as the scenarios see it.
#[async_trait]
pub trait TestBroker: Sync {
    type Publisher: Publisher + 'static;
    /// How the printed rates name the broker; also the prefix of the
    /// SQLite database files.
    const NAME: &'static str;

    /// A publisher straight to this destination.
    fn publisher(&self) -> Self::Publisher;
    /// How many messages the destination holds.
    async fn count(&self) -> u64;
    /// Reads `n` messages from the destination: their message ids, in the
    /// order read, repeats included.
    async fn consume_ids(&self, n: usize) -> Vec<String>;
}

/// A recruiting event with a partition key, an event type, a schema
/// version and a trace header, so that every field has something to carry.
pub fn candidate(topic: &str, n: u32) -> NewMessage {
    NewMessage::json(
        topic,
        &serde_json::json!({ "candidate_id": n, "status": "interviewing" }),
    )
    .unwrap()
    .with_partition_key(format!("candidate-{n}"))
    .with_event_type("CandidateStatusChanged")
    .with_schema_version(2)
    .with_header("traceparent", format!("00-trace-{n}-01"))
}

/// A fresh outbox (database files named after `prefix`) holding a
/// [`candidate`] on the topic `candidates` for each of `ns`, and their ids
/// in order.
pub async fn with_candidates(
    prefix: &str,
    ns: impl IntoIterator<Item = u32>,
) -> (TempDb, SqliteOutbox, Vec<MessageId>) {
    let (db, outbox) = migrated(prefix).await;
    let messages: Vec<NewMessage> = ns.into_iter().map(|n| candidate("candidates", n)).collect();
    let ids = messages.iter().map(NewMessage::id).collect();
    enqueue(&db, &outbox, messages).await;
    (db, outbox, ids)
}

/// Relays ten messages through a publisher whose first acknowledgement of
/// each is "lost", so each is sent twice. Returns the ids enqueued and the
/// messages as the publisher was given them.
pub async fn publish_each_twice<B: TestBroker>(
    broker: &B,
) -> (HashSet<String>, Vec<OutboxMessage>) {
    let (_db, outbox, ids) = with_candidates(B::NAME, 0..10).await;
    let ids: HashSet<String> = ids.iter().map(ToString::to_string).collect();

    let mut probe = Probe::new(broker.publisher());
    probe.lose_first_ack = true;
    let calls = probe.calls.clone();
    let seen = probe.seen.clone();
    relay_until_drained(&outbox, probe, "the outbox to drain", TIMEOUT).await;
    assert_eq!(calls.load(Ordering::SeqCst), 20, "each message sent twice");
    let seen = seen.lock().unwrap().clone();
    (ids, seen)
}

/// For a broker that deduplicates on the message id: a message sent twice
/// is stored once, and a third send straight through the publisher is
/// acknowledged without storing anything new.
pub async fn a_message_sent_twice_is_stored_once<B: TestBroker>(broker: &B) {
    let (ids, seen) = publish_each_twice(broker).await;
    assert_eq!(broker.count().await, 10);
    let got: HashSet<String> = broker.consume_ids(10).await.into_iter().collect();
    assert_eq!(got, ids);

    let again: Vec<OutboxMessage> = seen.into_iter().take(10).collect();
    let results = broker.publisher().publish(&again).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(broker.count().await, 10);
}

/// Cuts the broker off while 20 messages wait, then lets it back: nothing
/// is published during the outage, and afterwards everything is, without a
/// dead letter. `through_proxy` reaches the broker through `proxy` and
/// gives up on an unanswered publish within seconds; `after_cut` waits for
/// whatever a client must notice before the outage shows.
pub async fn nothing_is_lost_while_unreachable<B: TestBroker, P: Publisher + 'static>(
    broker: &B,
    proxy: &Proxy,
    through_proxy: P,
    after_cut: impl AsyncFnOnce(),
) {
    let (db, outbox) = migrated(B::NAME).await;
    let probe = Probe::new(through_proxy);
    let failures = probe.failures.clone();
    let relay = Relay::builder(outbox.clone(), probe)
        .retry(fast_retry().max_attempts(1000))
        .spawn()
        .unwrap();

    let first = candidate("candidates", 0);
    let mut ids = vec![first.id().to_string()];
    enqueue(&db, &outbox, vec![first]).await;
    drained(&outbox, "the first message", TIMEOUT).await;

    proxy.cut();
    after_cut().await;
    let messages: Vec<NewMessage> = (1..=20).map(|n| candidate("candidates", n)).collect();
    ids.extend(messages.iter().map(|m| m.id().to_string()));
    enqueue(&db, &outbox, messages).await;
    wait_for("failed attempts", TIMEOUT, || async {
        failures.load(Ordering::SeqCst) >= 40
    })
    .await;
    assert_eq!(
        pending(&outbox).await,
        20,
        "nothing published during the outage"
    );
    assert_eq!(broker.count().await, 1);

    proxy.restore();
    drained(&outbox, "the backlog to drain", TIMEOUT).await;
    relay.shutdown().await.unwrap();

    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(broker.count().await, 21);
    let got: HashSet<String> = broker.consume_ids(21).await.into_iter().collect();
    assert_eq!(got, ids.into_iter().collect::<HashSet<_>>());
}

/// Drains 20,000 messages through the broker and prints the rate (no
/// timing assertion: the number is for the record).
pub async fn drains_a_large_backlog<B: TestBroker>(broker: &B) {
    const N: usize = 20_000;
    let (db, outbox) = migrated(B::NAME).await;
    let messages: Vec<NewMessage> = (0..N as u32)
        .map(|n| candidate("candidates", n).with_partition_key(format!("candidate-{}", n % 5000)))
        .collect();
    enqueue(&db, &outbox, messages).await;

    let probe = Probe::new(broker.publisher());
    let busy = probe.busy.clone();
    let started = std::time::Instant::now();
    let relay = Relay::builder(outbox.clone(), probe)
        .batch_size(500)
        .spawn()
        .unwrap();
    drained(&outbox, "the backlog to drain", TIMEOUT).await;
    let elapsed = started.elapsed();
    relay.shutdown().await.unwrap();
    assert_eq!(broker.count().await, N as u64);
    let busy = Duration::from_nanos(busy.load(Ordering::SeqCst));
    println!(
        "{}: {N} messages in {elapsed:?} = {:.0} events/s; \
         {busy:?} ({:.0}%) inside the publisher, the rest in the relay and SQLite",
        B::NAME,
        N as f64 / elapsed.as_secs_f64(),
        100.0 * busy.as_secs_f64() / elapsed.as_secs_f64()
    );
}
