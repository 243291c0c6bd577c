//! The RabbitMQ publisher against a real broker (127.0.0.1:5672,
//! guest/guest), with the relay on an SQLite outbox.

mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use outbox::publisher::{Envelope, RabbitMqPublisher};
use outbox::{MessageId, NewMessage, Relay};
use support::probe::Probe;
use support::sqlite::{drained, enqueue, migrated, pending};
use support::{fast_retry, wait_for};

const RABBIT: &str = "127.0.0.1:5672";
const START_RABBIT: &str = "rabbitmq-server -detached";
const TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of the database files.
const DB: &str = "outbox-amqp";

fn uri(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

// ---------------------------------------------------------------------------
// RabbitMQ

/// An exchange and a queue bound to it with routing key `candidates`, both
/// of their own for one test. The queue is exclusive and the exchange
/// auto-deleted, so the broker removes both when the connection closes,
/// also when the test fails.
struct TestBroker {
    conn: Connection,
    channel: Channel,
    exchange: String,
    queue: String,
}

impl TestBroker {
    async fn new() -> TestBroker {
        support::require_service("RabbitMQ", RABBIT, START_RABBIT).await;
        let conn = Connection::connect(&uri(RABBIT), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = conn.create_channel().await.unwrap();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let exchange = format!("outbox.test.{id}");
        let queue = format!("outbox.test.{id}.candidates");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "candidates".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        TestBroker {
            conn,
            channel,
            exchange,
            queue,
        }
    }

    async fn count(&self) -> u32 {
        self.channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Consumes `n` messages from the queue, acking each.
    async fn consume(&self, n: usize) -> Vec<Delivery> {
        let mut consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            let d = tokio::time::timeout(TIMEOUT, consumer.next())
                .await
                .unwrap_or_else(|_| panic!("consumer got {} of {n} messages", out.len()))
                .expect("consumer open")
                .expect("delivery");
            d.ack(BasicAckOptions::default()).await.unwrap();
            out.push(d);
        }
        out
    }

    async fn cleanup(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.conn.close(200, "test done".into()).await;
    }
}

fn header(d: &Delivery, name: &str) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => panic!("header {name} is not a long string: {other:?}"),
    }
}

fn message_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .expect("message_id set")
        .to_string()
}

fn candidate(topic: &str, n: u32) -> NewMessage {
    NewMessage::json(
        topic,
        &serde_json::json!({ "candidate_id": n, "status": "offer" }),
    )
    .unwrap()
    .with_partition_key(format!("candidate-{n}"))
    .with_event_type("CandidateStatusChanged")
    .with_schema_version(3)
    .with_header("traceparent", format!("00-trace-{n}-01"))
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_to_a_queue_with_properties() {
    let broker = TestBroker::new().await;
    let (db, outbox) = migrated(DB).await;
    let messages: Vec<NewMessage> = (0..5).map(|n| candidate("candidates", n)).collect();
    let ids: Vec<MessageId> = messages.iter().map(NewMessage::id).collect();
    enqueue(&db, &outbox, messages).await;

    let publisher = RabbitMqPublisher::new(uri(RABBIT), &broker.exchange);
    let relay = Relay::builder(outbox.clone(), publisher).spawn().unwrap();
    drained(&outbox, "the outbox to drain", TIMEOUT).await;
    relay.shutdown().await.unwrap();

    let got = broker.consume(5).await;
    for (n, d) in got.iter().enumerate() {
        let id = ids[n].to_string();
        assert_eq!(d.routing_key.as_str(), "candidates");
        let payload: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(payload["candidate_id"], n);
        let p = &d.properties;
        assert_eq!(message_id(d), id);
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            p.content_type().as_ref().map(|s| s.to_string()),
            Some("application/json".to_owned())
        );
        assert_eq!(
            p.kind().as_ref().map(|s| s.to_string()),
            Some("CandidateStatusChanged".to_owned())
        );
        assert!(p.timestamp().is_some_and(|t| t > 1_600_000_000));
        assert_eq!(header(d, "outbox-id"), Some(id));
        assert_eq!(header(d, "outbox-schema-version").as_deref(), Some("3"));
        assert_eq!(
            header(d, "outbox-partition-key"),
            Some(format!("candidate-{n}"))
        );
        assert_eq!(header(d, "traceparent"), Some(format!("00-trace-{n}-01")));
    }
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_binary_mode_uses_amqp_binding_headers() {
    let broker = TestBroker::new().await;
    let (db, outbox) = migrated(DB).await;
    let m = candidate("candidates", 7);
    let id = m.id().to_string();
    enqueue(&db, &outbox, vec![m]).await;

    let publisher = RabbitMqPublisher::new(uri(RABBIT), &broker.exchange).with_envelope(
        Envelope::CloudEventsBinary {
            source: "/recruiting/candidates".into(),
        },
    );
    let relay = Relay::builder(outbox.clone(), publisher).spawn().unwrap();
    drained(&outbox, "the outbox to drain", TIMEOUT).await;
    relay.shutdown().await.unwrap();

    let d = &broker.consume(1).await[0];
    assert_eq!(message_id(d), id);
    assert_eq!(header(d, "cloudEvents:specversion").as_deref(), Some("1.0"));
    assert_eq!(header(d, "cloudEvents:id"), Some(id));
    assert_eq!(
        header(d, "cloudEvents:source").as_deref(),
        Some("/recruiting/candidates")
    );
    assert_eq!(
        header(d, "cloudEvents:type").as_deref(),
        Some("CandidateStatusChanged")
    );
    assert_eq!(
        header(d, "cloudEvents:subject").as_deref(),
        Some("candidate-7")
    );
    assert!(header(d, "cloudEvents:time").is_some());
    assert_eq!(header(d, "cloudEvents:datacontenttype"), None);
    assert_eq!(
        d.properties.content_type().as_ref().map(|s| s.to_string()),
        Some("application/json".to_owned())
    );
    assert_eq!(header(d, "traceparent").as_deref(), Some("00-trace-7-01"));
    let payload: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(payload["candidate_id"], 7);
    broker.cleanup().await;
}

/// AMQP brokers do not deduplicate: a message sent twice is queued twice,
/// with the same `message_id` for consumers to deduplicate on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_twice_carries_one_message_id() {
    let broker = TestBroker::new().await;
    let (db, outbox) = migrated(DB).await;
    let messages: Vec<NewMessage> = (0..10).map(|n| candidate("candidates", n)).collect();
    let ids: HashSet<String> = messages.iter().map(|m| m.id().to_string()).collect();
    enqueue(&db, &outbox, messages).await;

    let mut probe = Probe::new(RabbitMqPublisher::new(uri(RABBIT), &broker.exchange));
    probe.lose_first_ack = true;
    let calls = probe.calls.clone();
    let relay = Relay::builder(outbox.clone(), probe)
        .retry(fast_retry().max_attempts(1000))
        .spawn()
        .unwrap();
    drained(&outbox, "the outbox to drain", TIMEOUT).await;
    relay.shutdown().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 20, "each message sent twice");

    let got = broker.consume(20).await;
    let mut per_id: std::collections::HashMap<String, usize> = Default::default();
    for d in &got {
        *per_id.entry(message_id(d)).or_default() += 1;
    }
    assert_eq!(per_id.keys().cloned().collect::<HashSet<_>>(), ids);
    assert!(per_id.values().all(|&c| c == 2), "{per_id:?}");
    // What a deduplicating consumer applies: one per id.
    assert_eq!(per_id.len(), 10);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_the_broker_is_unreachable() {
    let broker = TestBroker::new().await;
    let proxy = support::Proxy::start(RABBIT).await;
    let (db, outbox) = migrated(DB).await;
    let probe = Probe::new(
        RabbitMqPublisher::new(uri(&proxy.addr.to_string()), &broker.exchange)
            .with_confirm_timeout(Duration::from_secs(2))
            .with_connect_timeout(Duration::from_secs(2)),
    );
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
    let got: HashSet<String> = broker.consume(21).await.iter().map(message_id).collect();
    assert_eq!(got, ids.into_iter().collect::<HashSet<_>>());
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_messages_are_dead_lettered() {
    let broker = TestBroker::new().await;
    let (db, outbox) = migrated(DB).await;
    // Interleaved, so that confirms of routable and returned messages mix.
    let mut messages = Vec::new();
    let mut unroutable = HashSet::new();
    let mut routable = HashSet::new();
    for n in 0..10 {
        let m = if n % 2 == 0 {
            candidate("nobody.listens", n)
        } else {
            candidate("candidates", n)
        };
        if n % 2 == 0 {
            unroutable.insert(m.id());
        } else {
            routable.insert(m.id().to_string());
        }
        messages.push(m);
    }
    enqueue(&db, &outbox, messages).await;

    let publisher = RabbitMqPublisher::new(uri(RABBIT), &broker.exchange);
    let relay = Relay::builder(outbox.clone(), publisher)
        .retry(fast_retry().max_attempts(1000))
        .spawn()
        .unwrap();
    drained(&outbox, "the outbox to drain", TIMEOUT).await;
    relay.shutdown().await.unwrap();

    let dead = outbox.dead_letters(100).await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.id()).collect::<HashSet<_>>(),
        unroutable
    );
    for d in &dead {
        assert_eq!(d.attempts, 1, "permanent: no retry");
        assert!(
            d.last_error
                .contains("no queue bound for routing key \"nobody.listens\""),
            "{}",
            d.last_error
        );
    }
    let got: HashSet<String> = broker.consume(5).await.iter().map(message_id).collect();
    assert_eq!(got, routable);
    broker.cleanup().await;
}

/// Drains 20,000 messages through RabbitMQ and prints the rate (no timing
/// assertion: the number is for the record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_a_large_backlog() {
    const N: usize = 20_000;
    let broker = TestBroker::new().await;
    let (db, outbox) = migrated(DB).await;
    let messages: Vec<NewMessage> = (0..N as u32)
        .map(|n| candidate("candidates", n).with_partition_key(format!("candidate-{}", n % 5000)))
        .collect();
    enqueue(&db, &outbox, messages).await;

    let probe = Probe::new(RabbitMqPublisher::new(uri(RABBIT), &broker.exchange));
    let busy = probe.busy.clone();
    let started = std::time::Instant::now();
    let relay = Relay::builder(outbox.clone(), probe)
        .batch_size(500)
        .spawn()
        .unwrap();
    drained(&outbox, "the backlog to drain", TIMEOUT).await;
    let elapsed = started.elapsed();
    relay.shutdown().await.unwrap();
    assert_eq!(broker.count().await, N as u32);
    let busy = Duration::from_nanos(busy.load(Ordering::SeqCst));
    println!(
        "RabbitMQ: {N} messages in {elapsed:?} = {:.0} events/s; \
         {busy:?} ({:.0}%) inside the publisher, the rest in the relay and SQLite",
        N as f64 / elapsed.as_secs_f64(),
        100.0 * busy.as_secs_f64() / elapsed.as_secs_f64()
    );
    broker.cleanup().await;
}
