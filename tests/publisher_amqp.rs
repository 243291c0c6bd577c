//! The RabbitMQ publisher against a real broker (127.0.0.1:5672,
//! guest/guest), with the relay on an SQLite outbox.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use outbox::publisher::{Envelope, RabbitMqPublisher};
use support::broker::{self, candidate, TestBroker};
use support::sqlite::{assert_dead_at_once, enqueue, migrated, relay_until_drained};

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
struct TestQueue {
    conn: Connection,
    channel: Channel,
    exchange: String,
    queue: String,
}

impl TestQueue {
    async fn new() -> TestQueue {
        support::require_service("RabbitMQ", RABBIT, START_RABBIT).await;
        let conn = Connection::connect(&uri(RABBIT), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = conn.create_channel().await.unwrap();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let exchange = format!("outbox.test.{id}");
        let queue = format!("outbox.test.{id}.candidates");
        support::amqp::declare_bound_queue(
            &channel,
            &exchange,
            &queue,
            "candidates",
            support::amqp::Lifetime::Transient,
        )
        .await
        .unwrap();
        TestQueue {
            conn,
            channel,
            exchange,
            queue,
        }
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

#[async_trait]
impl TestBroker for TestQueue {
    type Publisher = RabbitMqPublisher;
    const NAME: &'static str = "RabbitMQ";

    fn publisher(&self) -> RabbitMqPublisher {
        RabbitMqPublisher::new(uri(RABBIT), &self.exchange)
    }

    async fn count(&self) -> u64 {
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
            .into()
    }

    async fn consume_ids(&self, n: usize) -> Vec<String> {
        self.consume(n).await.iter().map(message_id).collect()
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

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_to_a_queue_with_properties() {
    let broker = TestQueue::new().await;
    let (_db, outbox, ids) = broker::with_candidates(DB, 0..5).await;

    let publisher = RabbitMqPublisher::new(uri(RABBIT), &broker.exchange);
    relay_until_drained(&outbox, publisher, "the outbox to drain", TIMEOUT).await;

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
        assert_eq!(header(d, "outbox-schema-version").as_deref(), Some("2"));
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
    let broker = TestQueue::new().await;
    let (_db, outbox, ids) = broker::with_candidates(DB, [7]).await;
    let id = ids[0].to_string();

    let publisher = RabbitMqPublisher::new(uri(RABBIT), &broker.exchange).with_envelope(
        Envelope::CloudEventsBinary {
            source: "/recruiting/candidates".into(),
        },
    );
    relay_until_drained(&outbox, publisher, "the outbox to drain", TIMEOUT).await;

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
    let broker = TestQueue::new().await;
    let (ids, _) = broker::publish_each_twice(&broker).await;

    let mut per_id: HashMap<String, usize> = HashMap::new();
    for id in broker.consume_ids(20).await {
        *per_id.entry(id).or_default() += 1;
    }
    assert_eq!(per_id.keys().cloned().collect::<HashSet<_>>(), ids);
    assert!(per_id.values().all(|&c| c == 2), "{per_id:?}");
    // What a deduplicating consumer applies: one per id.
    assert_eq!(per_id.len(), 10);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_the_broker_is_unreachable() {
    let broker = TestQueue::new().await;
    let proxy = support::Proxy::start(RABBIT).await;
    let publisher = RabbitMqPublisher::new(uri(&proxy.addr.to_string()), &broker.exchange)
        .with_confirm_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(2));
    broker::nothing_is_lost_while_unreachable(&broker, &proxy, publisher, async || {}).await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_messages_are_dead_lettered() {
    let broker = TestQueue::new().await;
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
    relay_until_drained(&outbox, publisher, "the outbox to drain", TIMEOUT).await;

    let dead = outbox.dead_letters(100).await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.id()).collect::<HashSet<_>>(),
        unroutable
    );
    for d in &dead {
        assert_dead_at_once(d, "no queue bound for routing key \"nobody.listens\"");
    }
    let got: HashSet<String> = broker.consume(5).await.iter().map(message_id).collect();
    assert_eq!(got, routable);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_a_large_backlog() {
    let broker = TestQueue::new().await;
    broker::drains_a_large_backlog(&broker).await;
    broker.cleanup().await;
}
