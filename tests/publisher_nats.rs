//! The NATS JetStream publisher against a real nats-server (127.0.0.1:4222,
//! JetStream enabled), with the relay on an SQLite outbox.

mod support;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use outbox::publisher::{Envelope, NatsPublisher};
use outbox::NewMessage;
use support::broker::{self, candidate, TestBroker};
use support::sqlite::{
    assert_dead_at_once, enqueue, migrated, migrated_with_payload_limit, relay_until_drained,
};

const NATS: &str = "127.0.0.1:4222";
const START_NATS: &str = "start-stop-daemon --start --oknodo --background \
    --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
    -l /var/log/nats-server.log";
const TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of the database files.
const DB: &str = "outbox-nats";

// ---------------------------------------------------------------------------
// NATS

async fn nats() -> async_nats::Client {
    support::require_service("NATS", NATS, START_NATS).await;
    async_nats::connect(NATS).await.expect("connect to NATS")
}

/// A stream of its own for one test, capturing `<prefix>>`; deleted when
/// dropped, also when the test fails.
struct TestStream {
    client: async_nats::Client,
    js: jetstream::Context,
    name: String,
    prefix: String,
}

impl TestStream {
    async fn create(client: &async_nats::Client) -> TestStream {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let name = format!("OUTBOX_TEST_{id}");
        let prefix = format!("outboxtest.{id}.");
        let js = jetstream::new(client.clone());
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create stream");
        TestStream {
            client: client.clone(),
            js,
            name,
            prefix,
        }
    }

    /// Reads `n` messages through an ephemeral pull consumer, acking each.
    async fn consume(&self, n: usize) -> Vec<async_nats::Message> {
        let s = self.js.get_stream(&self.name).await.expect("get stream");
        let consumer = s
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .expect("create consumer");
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while out.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "consumer got {} of {n} messages",
                out.len()
            );
            let mut batch = consumer
                .fetch()
                .max_messages(n - out.len())
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .expect("fetch");
            while let Some(m) = batch.next().await {
                let m = m.expect("message");
                m.ack().await.expect("ack");
                out.push(m.message.clone());
            }
        }
        out
    }
}

#[async_trait]
impl TestBroker for TestStream {
    type Publisher = NatsPublisher;
    const NAME: &'static str = "NATS JetStream";

    fn publisher(&self) -> NatsPublisher {
        NatsPublisher::new(self.client.clone()).with_subject_prefix(&self.prefix)
    }

    async fn count(&self) -> u64 {
        let mut s = self.js.get_stream(&self.name).await.expect("get stream");
        s.info().await.expect("stream info").state.messages
    }

    async fn consume_ids(&self, n: usize) -> Vec<String> {
        self.consume(n)
            .await
            .iter()
            .map(|m| header(m, "Nats-Msg-Id").unwrap().to_owned())
            .collect()
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime of its own: drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(c) = async_nats::connect(NATS).await {
                    let _ = jetstream::new(c).delete_stream(&name).await;
                }
            });
        })
        .join();
    }
}

fn header<'a>(m: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str())
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_to_jetstream_with_headers() {
    let client = nats().await;
    let stream = TestStream::create(&client).await;
    let (_db, outbox, ids) = broker::with_candidates(DB, 0..5).await;

    let publisher = NatsPublisher::new(client.clone()).with_subject_prefix(&stream.prefix);
    relay_until_drained(&outbox, publisher, "the outbox to drain", TIMEOUT).await;

    let got = stream.consume(5).await;
    assert_eq!(stream.count().await, 5);
    for (n, m) in got.iter().enumerate() {
        let n = n as u32;
        assert_eq!(m.subject.as_str(), format!("{}candidates", stream.prefix));
        let payload: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(payload["candidate_id"], n);
        assert_eq!(
            header(m, "Nats-Msg-Id"),
            Some(ids[n as usize].to_string().as_str())
        );
        assert_eq!(
            header(m, "outbox-id"),
            Some(ids[n as usize].to_string().as_str())
        );
        assert_eq!(
            header(m, "outbox-event-type"),
            Some("CandidateStatusChanged")
        );
        assert_eq!(header(m, "outbox-schema-version"), Some("2"));
        assert_eq!(
            header(m, "outbox-partition-key"),
            Some(format!("candidate-{n}").as_str())
        );
        assert_eq!(header(m, "Content-Type"), Some("application/json"));
        assert_eq!(
            header(m, "traceparent"),
            Some(format!("00-trace-{n}-01").as_str())
        );
    }
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_modes_over_jetstream() {
    let client = nats().await;
    let stream = TestStream::create(&client).await;
    let (db, outbox) = migrated(DB).await;
    let binary = candidate("binary", 1);
    let structured = candidate("structured", 2);
    let (binary_id, structured_id) = (binary.id(), structured.id());

    // Binary mode: payload as is, attributes in ce-* headers. Structured
    // mode: a CloudEvents JSON document as the body.
    let source = "/recruiting/candidates".to_owned();
    for (message, envelope) in [
        (
            binary,
            Envelope::CloudEventsBinary {
                source: source.clone(),
            },
        ),
        (structured, Envelope::CloudEventsStructured { source }),
    ] {
        enqueue(&db, &outbox, vec![message]).await;
        let publisher = stream.publisher().with_envelope(envelope);
        relay_until_drained(&outbox, publisher, "the event", TIMEOUT).await;
    }

    let got = stream.consume(2).await;
    let b = &got[0];
    assert_eq!(b.subject.as_str(), format!("{}binary", stream.prefix));
    assert_eq!(header(b, "ce-specversion"), Some("1.0"));
    assert_eq!(header(b, "ce-id"), Some(binary_id.to_string().as_str()));
    assert_eq!(header(b, "ce-source"), Some("/recruiting/candidates"));
    assert_eq!(header(b, "ce-type"), Some("CandidateStatusChanged"));
    assert_eq!(header(b, "ce-subject"), Some("candidate-1"));
    assert_eq!(header(b, "ce-schemaversion"), Some("2"));
    assert!(header(b, "ce-time").is_some());
    assert_eq!(header(b, "Content-Type"), Some("application/json"));
    assert_eq!(
        header(b, "Nats-Msg-Id"),
        Some(binary_id.to_string().as_str())
    );
    assert_eq!(header(b, "traceparent"), Some("00-trace-1-01"));
    let payload: serde_json::Value = serde_json::from_slice(&b.payload).unwrap();
    assert_eq!(payload["candidate_id"], 1);

    let s = &got[1];
    assert_eq!(
        header(s, "Content-Type"),
        Some("application/cloudevents+json")
    );
    assert_eq!(
        header(s, "Nats-Msg-Id"),
        Some(structured_id.to_string().as_str())
    );
    let doc: serde_json::Value = serde_json::from_slice(&s.payload).unwrap();
    assert_eq!(doc["specversion"], "1.0");
    assert_eq!(doc["id"], structured_id.to_string());
    assert_eq!(doc["type"], "CandidateStatusChanged");
    assert_eq!(doc["subject"], "candidate-2");
    assert_eq!(doc["data"]["candidate_id"], 2);
}

/// JetStream drops a second copy within its duplicate window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_twice_is_stored_once() {
    let stream = TestStream::create(&nats().await).await;
    broker::a_message_sent_twice_is_stored_once(&stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_the_broker_is_unreachable() {
    let stream = TestStream::create(&nats().await).await;
    let proxy = support::Proxy::start(NATS).await;
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .connect(proxy.addr.to_string())
        .await
        .expect("connect through the proxy");
    let publisher = NatsPublisher::new(client.clone())
        .with_subject_prefix(&stream.prefix)
        .with_ack_timeout(Duration::from_secs(1));
    broker::nothing_is_lost_while_unreachable(&stream, &proxy, publisher, async || {
        support::eventually("the client to notice the outage", || {
            client.connection_state() != async_nats::connection::State::Connected
        })
        .await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered() {
    let client = nats().await;
    let stream = TestStream::create(&client).await;
    let (db, outbox) = migrated_with_payload_limit(DB, 4 << 20).await;
    let max_payload = client.server_info().max_payload;
    assert!(max_payload > 0);

    let too_big = NewMessage::bytes("candidates", vec![b'x'; max_payload + 1])
        .with_event_type("CandidateCvUploaded");
    let fine = candidate("candidates", 1);
    let (too_big_id, fine_id) = (too_big.id(), fine.id());
    enqueue(&db, &outbox, vec![too_big, fine]).await;

    let publisher = NatsPublisher::new(client.clone()).with_subject_prefix(&stream.prefix);
    relay_until_drained(&outbox, publisher, "the outbox to drain", TIMEOUT).await;

    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id(), too_big_id);
    assert_dead_at_once(&dead[0], "max_payload");
    let got = stream.consume(1).await;
    assert_eq!(
        header(&got[0], "Nats-Msg-Id"),
        Some(fine_id.to_string().as_str())
    );

    // A subject that no stream captures.
    let orphan = candidate(&format!("nostream{}", uuid::Uuid::now_v7().simple()), 2);
    let orphan_id = orphan.id();
    enqueue(&db, &outbox, vec![orphan]).await;
    let publisher = NatsPublisher::new(client.clone()).with_subject_prefix("outboxtest.orphans.");
    relay_until_drained(
        &outbox,
        publisher,
        "the orphan to be dead-lettered",
        TIMEOUT,
    )
    .await;
    let dead = outbox.dead_letters(10).await.unwrap();
    let orphan_dead = dead
        .iter()
        .find(|d| d.id() == orphan_id)
        .expect("the orphan is a dead letter");
    assert_dead_at_once(orphan_dead, "no JetStream stream captures subject");
    assert_eq!(stream.count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_a_large_backlog() {
    let stream = TestStream::create(&nats().await).await;
    broker::drains_a_large_backlog(&stream).await;
}
