//! The Kafka publisher against librdkafka's mock cluster (it speaks the
//! real Kafka protocol in-process, so no broker is needed), driven by a
//! relay on a fresh SQLite outbox, read back with a real consumer.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox::publisher::{Envelope, KafkaPublisher};
use outbox::{
    MessageId, NewMessage, OutboxMessage, PublishError, Publisher, RelayHandle, SqliteOutbox,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use support::fast_retry;
use support::probe::Probe;
use support::sqlite::{
    drained, enqueue, enqueue_until_transient_failures, migrated, migrated_with_payload_limit,
    pending, relay, the_dead_letter, TempDb,
};

const TIMEOUT: Duration = Duration::from_secs(30);
/// The prefix of the database files.
const DB: &str = "outbox-kafka";
const PARTITIONS: i32 = 3;

// ---------------------------------------------------------------- database

fn candidate(n: u32, key: &str) -> NewMessage {
    support::keyed_candidate("candidates", n, key)
}

// ------------------------------------------------------------------- kafka

/// A one-broker mock cluster with one topic of [`PARTITIONS`] partitions.
struct MockKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap: String,
    topic: &'static str,
}

impl MockKafka {
    fn start(topic: &'static str) -> MockKafka {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster
            .create_topic(topic, PARTITIONS, 1)
            .expect("create topic");
        let bootstrap = cluster.bootstrap_servers();
        MockKafka {
            cluster,
            bootstrap,
            topic,
        }
    }

    /// A consumer reading every partition of the topic from the beginning.
    fn consumer(&self) -> StreamConsumer {
        consumer(&self.bootstrap, self.topic)
    }

    /// A publisher whose deliveries time out after 500 ms, with the
    /// librdkafka `settings` on top.
    fn timing_out_publisher(&self, settings: &[(&str, &str)]) -> KafkaPublisher {
        settings
            .iter()
            .fold(
                KafkaPublisher::builder(&self.bootstrap)
                    .delivery_timeout(Duration::from_millis(500)),
                |builder, &(key, value)| builder.set(key, value),
            )
            .build()
            .unwrap()
    }

    /// A relay that retries for as long as a test runs, started with a
    /// consumer that has read the warm-up message (see [`warm_up`]).
    async fn warmed_up(
        &self,
        db: &TempDb,
        outbox: &SqliteOutbox,
        publisher: impl Publisher,
    ) -> (RelayHandle, StreamConsumer) {
        let relay = relay(outbox, publisher, fast_retry().max_attempts(10_000));
        let consumer = self.consumer();
        warm_up(db, outbox, &consumer).await;
        (relay, consumer)
    }
}

/// A consumer reading every partition of `topic` from the beginning.
fn consumer(bootstrap: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// A record as the consumer saw it.
#[derive(Debug, Clone)]
struct Record {
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Record {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn id(&self) -> MessageId {
        self.header("outbox-id")
            .expect("outbox-id header")
            .parse()
            .unwrap()
    }

    fn n(&self) -> u64 {
        let v: serde_json::Value = serde_json::from_slice(&self.payload).unwrap();
        v["n"].as_u64().unwrap()
    }
}

/// Reads until `n` records arrived; panics after [`TIMEOUT`].
async fn consume(consumer: &StreamConsumer, n: usize) -> Vec<Record> {
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match tokio::time::timeout(left, consumer.recv()).await {
            Err(_) => panic!("timed out after {} of {n} records", out.len()),
            // Broker outages reach the consumer as errors; it reconnects.
            Ok(Err(_)) => continue,
            Ok(Ok(m)) => m,
        };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().unwrap_or_default().to_vec(),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    out
}

/// Checks that every key's records sit in one partition, in commit order.
fn assert_key_order(records: &[Record]) {
    let mut by_key: HashMap<Vec<u8>, Vec<&Record>> = HashMap::new();
    for r in records {
        by_key.entry(r.key.clone()).or_default().push(r);
    }
    for (key, rs) in by_key {
        let partitions: HashSet<i32> = rs.iter().map(|r| r.partition).collect();
        assert_eq!(
            partitions.len(),
            1,
            "key {key:?} spread over {partitions:?}"
        );
        let mut rs = rs;
        rs.sort_by_key(|r| r.offset);
        let ns: Vec<u64> = rs.iter().map(|r| r.n()).collect();
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "key {key:?} out of order in its partition: {ns:?}"
        );
    }
}

/// Enqueues one message and reads it back: the producer then knows the
/// cluster.
async fn warm_up(db: &TempDb, outbox: &SqliteOutbox, consumer: &StreamConsumer) {
    enqueue(db, outbox, vec![candidate(0, "warm-up")]).await;
    assert_eq!(consume(consumer, 1).await[0].n(), 0);
}

/// Waits for an empty outbox, stops the relay and checks that nothing was
/// dead-lettered.
async fn drain_and_stop(outbox: &SqliteOutbox, relay: RelayHandle) {
    drained(outbox, "an empty outbox", TIMEOUT).await;
    relay.shutdown().await.unwrap();
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

/// Reads until each of `ids` arrived and returns the first arrival of each,
/// in arrival order: a record the broker stored before a failure was
/// reported may arrive twice, which the id header tells.
async fn first_arrivals(consumer: &StreamConsumer, ids: &HashSet<MessageId>) -> Vec<Record> {
    let mut records = Vec::new();
    let mut got = HashSet::new();
    while !ids.is_subset(&got) {
        let r = consume(consumer, 1).await.remove(0);
        if got.insert(r.id()) {
            records.push(r);
        }
    }
    records
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_messages_arrive_keyed_with_metadata_headers_in_key_order() {
    let kafka = MockKafka::start("test.candidates");
    let (db, outbox) = migrated(DB).await;
    let publisher = KafkaPublisher::builder(&kafka.bootstrap)
        .topic_prefix("test.")
        .build()
        .unwrap();
    let relay = relay(&outbox, publisher, fast_retry());

    // Four keys, five messages each, each in its own transaction, so the
    // keys interleave in the outbox; plus one message without a key.
    let mut ids = Vec::new();
    for n in 0..20u32 {
        let m = candidate(n, &format!("candidate-{}", n % 4))
            .with_header("traceparent", format!("00-trace-{n}-01"));
        ids.push(m.id());
        enqueue(&db, &outbox, vec![m]).await;
    }
    let keyless = NewMessage::json("candidates", &serde_json::json!({ "n": 100 })).unwrap();
    let keyless_id = keyless.id();
    enqueue(&db, &outbox, vec![keyless]).await;

    let consumer = kafka.consumer();
    let records = consume(&consumer, 21).await;
    drained(&outbox, "an empty outbox", TIMEOUT).await;
    relay.shutdown().await.unwrap();

    let got: HashSet<MessageId> = records.iter().map(Record::id).collect();
    assert_eq!(got.len(), 21, "each message once");
    for r in &records {
        let id = r.id();
        if id == keyless_id {
            assert_eq!(
                r.key,
                id.to_string().into_bytes(),
                "no key: the id is the key"
            );
            assert_eq!(r.header("outbox-partition-key"), None);
            continue;
        }
        let n = r.n() as u32;
        let key = format!("candidate-{}", n % 4);
        assert_eq!(id, ids[n as usize]);
        assert_eq!(r.key, key.as_bytes(), "the partition key is the Kafka key");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap(),
            serde_json::json!({ "n": n, "candidate": key })
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("outbox-event-type"),
            Some("CandidateStatusChanged")
        );
        assert_eq!(r.header("outbox-schema-version"), Some("2"));
        assert_eq!(r.header("outbox-partition-key"), Some(key.as_str()));
        assert!(r.header("outbox-position").unwrap().parse::<i64>().is_ok());
        let created = r.header("outbox-created-at").unwrap();
        chrono::DateTime::parse_from_rfc3339(created).unwrap();
        assert_eq!(
            r.header("traceparent"),
            Some(format!("00-trace-{n}-01").as_str())
        );
    }
    let keyed: Vec<Record> = records
        .into_iter()
        .filter(|r| r.id() != keyless_id)
        .collect();
    assert_key_order(&keyed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_cloudevents_attributes_travel_as_ce_headers() {
    let kafka = MockKafka::start("candidates");
    let (db, outbox) = migrated(DB).await;
    let publisher = KafkaPublisher::builder(&kafka.bootstrap)
        .envelope(Envelope::CloudEventsBinary {
            source: "/recruiting/candidates".into(),
        })
        .build()
        .unwrap();
    let relay = relay(&outbox, publisher, fast_retry());
    let m = candidate(1, "candidate-1").with_header("traceparent", "00-1-2-01");
    let (id, payload) = (m.id(), m.payload().to_vec());
    enqueue(&db, &outbox, vec![m]).await;

    let records = consume(&kafka.consumer(), 1).await;
    relay.shutdown().await.unwrap();
    let r = &records[0];
    assert_eq!(r.payload, payload, "binary mode: the payload as enqueued");
    assert_eq!(r.key, b"candidate-1");
    assert_eq!(r.header("ce_specversion"), Some("1.0"));
    assert_eq!(r.header("ce_id"), Some(id.to_string().as_str()));
    assert_eq!(r.header("ce_source"), Some("/recruiting/candidates"));
    assert_eq!(r.header("ce_type"), Some("CandidateStatusChanged"));
    assert_eq!(r.header("ce_subject"), Some("candidate-1"));
    assert_eq!(r.header("ce_schemaversion"), Some("2"));
    assert!(r.header("ce_sequence").is_some());
    chrono::DateTime::parse_from_rfc3339(r.header("ce_time").unwrap()).unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("ce_datacontenttype"), None, "it is content-type");
    assert_eq!(r.header("outbox-id"), Some(id.to_string().as_str()));
    assert_eq!(r.header("traceparent"), Some("00-1-2-01"));
}

/// Publishes every batch twice: what the relay does after a crash between
/// the broker's acknowledgement and its own.
#[derive(Debug)]
struct SendsTwice(KafkaPublisher);

#[async_trait]
impl Publisher for SendsTwice {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let first = self.0.publish(batch).await;
        assert!(first.iter().all(Result::is_ok), "{first:?}");
        self.0.publish(batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_is_idempotent_and_application_resends_are_detectable() {
    let kafka = MockKafka::start("candidates");

    // Even a configuration that asks otherwise gets the idempotent producer.
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("enable.idempotence", "false")
        .set("acks", "1");
    let publisher = KafkaPublisher::builder_from_config(config).build().unwrap();
    let c = publisher.config();
    assert_eq!(c.get("enable.idempotence"), Some("true"));
    assert_eq!(c.get("acks"), Some("all"));
    assert_eq!(c.get("message.timeout.ms"), Some("5000"));
    // And librdkafka took it so.
    let native = c.create_native_config().unwrap();
    assert_eq!(native.get("enable.idempotence").unwrap(), "true");
    assert_eq!(native.get("acks").unwrap(), "-1");
    let shown = format!("{publisher:?}");
    assert!(shown.contains(&kafka.bootstrap), "{shown}");

    // Kafka's idempotence deduplicates the producer's own retries, not a
    // message the application sends again: the relay's re-send is a second
    // record, recognisable by its id header.
    let (db, outbox) = migrated(DB).await;
    let relay = relay(&outbox, SendsTwice(publisher), fast_retry());
    let m = candidate(1, "candidate-1");
    let id = m.id();
    enqueue(&db, &outbox, vec![m]).await;
    let records = consume(&kafka.consumer(), 2).await;
    relay.shutdown().await.unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.id() == id));
    assert_eq!(records[0].payload, records[1].payload);
    assert_eq!(records[0].partition, records[1].partition);
    let distinct: HashSet<MessageId> = records.iter().map(Record::id).collect();
    assert_eq!(
        distinct.len(),
        1,
        "a consumer deduplicating on outbox-id applies it once"
    );
}

/// A relay through a publisher with the librdkafka `settings` (see
/// [`MockKafka::timing_out_publisher`]), warmed up; then `fail` breaks the
/// cluster, `messages` are enqueued until two failed attempts are recorded
/// as transient, and `recover` heals the cluster: everything arrives, first
/// arrivals per key in commit order.
async fn retried_until_delivered(
    settings: &[(&str, &str)],
    fail: impl FnOnce(&MockCluster<'static, DefaultProducerContext>),
    messages: Vec<NewMessage>,
    recover: impl FnOnce(&MockCluster<'static, DefaultProducerContext>),
) {
    let kafka = MockKafka::start("candidates");
    let (db, outbox) = migrated(DB).await;
    let publisher = kafka.timing_out_publisher(settings);
    let (relay, consumer) = kafka.warmed_up(&db, &outbox, publisher).await;

    fail(&kafka.cluster);
    let ids: HashSet<MessageId> = messages.iter().map(NewMessage::id).collect();
    enqueue_until_transient_failures(&db, &outbox, messages, 2, TIMEOUT).await;

    recover(&kafka.cluster);
    drain_and_stop(&outbox, relay).await;
    assert_key_order(&first_arrivals(&consumer, &ids).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_fails_transiently_and_the_relay_retries_until_delivered() {
    retried_until_delivered(
        &[("reconnect.backoff.max.ms", "200")],
        |cluster| cluster.broker_down(1).unwrap(),
        (1..=9)
            .map(|n| candidate(n, &format!("candidate-{}", n % 3)))
            .collect(),
        |cluster| cluster.broker_up(1).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_errors_are_retried_by_the_producer_then_by_the_relay() {
    // A retriable broker error the producer retries by itself until the
    // delivery timeout, for as long as it takes the relay to record two
    // transient failures (the error list outlasts any number of timeouts
    // until it is cleared); then the broker recovers.
    retried_until_delivered(
        &[("retry.backoff.ms", "20"), ("retry.backoff.max.ms", "50")],
        |cluster| {
            cluster.request_errors(
                RDKafkaApiKey::Produce,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
            );
        },
        (1..=4).map(|n| candidate(n, "candidate-1")).collect(),
        |cluster| cluster.clear_request_errors(RDKafkaApiKey::Produce),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_idempotence_error_replaces_the_producer_and_loses_nothing() {
    let kafka = MockKafka::start("candidates");
    let (db, outbox) = migrated(DB).await;
    let publisher = std::sync::Arc::new(kafka.timing_out_publisher(&[]));
    let first_producer = publisher.producer();
    let (relay, consumer) = kafka.warmed_up(&db, &outbox, publisher.clone()).await;

    // An out-of-order sequence number breaks the idempotent producer for
    // good (librdkafka raises a fatal error): the publisher must replace it.
    kafka.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER; 2],
    );
    let messages: Vec<NewMessage> = (1..=4).map(|n| candidate(n, "candidate-1")).collect();
    let ids: HashSet<MessageId> = messages.iter().map(NewMessage::id).collect();
    enqueue(&db, &outbox, messages).await;
    drain_and_stop(&outbox, relay).await;

    let fatal = first_producer.client().fatal_error();
    assert!(fatal.is_some(), "the first producer hit a fatal error");
    assert!(
        publisher.producer().client().fatal_error().is_none(),
        "a healthy producer took its place"
    );
    assert_key_order(&first_arrivals(&consumer, &ids).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_failure_is_permanent() {
    let kafka = MockKafka::start("candidates");
    let (db, outbox) = migrated(DB).await;
    let publisher = KafkaPublisher::new(&kafka.bootstrap).unwrap();
    let relay = relay(&outbox, publisher, fast_retry());
    kafka.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let m = candidate(1, "candidate-1");
    let id = m.id();
    enqueue(&db, &outbox, vec![m]).await;
    let dead = the_dead_letter(&outbox, relay, TIMEOUT).await;
    assert_eq!((dead.id(), dead.attempts), (id, 1));
    let e = &dead.last_error;
    assert!(
        e.contains("permanent publish failure") && e.contains("not authorized"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_max_bytes_is_dead_lettered() {
    let kafka = MockKafka::start("candidates");
    let (db, outbox) = migrated_with_payload_limit(DB, 4 << 20).await;
    // librdkafka's default message.max.bytes is 1,000,000.
    let publisher = KafkaPublisher::new(&kafka.bootstrap).unwrap();
    let relay = relay(&outbox, publisher, fast_retry());

    let huge = NewMessage::bytes("candidates", vec![b'x'; 1_100_000]).with_partition_key("cv-1");
    let huge_id = huge.id();
    let small = candidate(1, "candidate-1");
    let small_id = small.id();
    enqueue(&db, &outbox, vec![huge, small]).await;

    let records = consume(&kafka.consumer(), 1).await;
    assert_eq!(records[0].id(), small_id, "other keys keep flowing");
    let dead = the_dead_letter(&outbox, relay, TIMEOUT).await;
    assert_eq!(dead.id(), huge_id);
    assert_eq!(dead.attempts, 1, "not retried");
    let e = &dead.last_error;
    assert!(
        e.contains("permanent publish failure") && e.contains("too large"),
        "{e}"
    );
    assert!(
        e.contains("message.max.bytes"),
        "the error says what to change: {e}"
    );
}

// --------------------------------------------------------- broker failures

/// A three-broker mock cluster whose topic has [`PARTITIONS`] partitions
/// of three replicas, partition `p` led by broker `p + 1`.
fn three_brokers(topic: &'static str) -> MockKafka {
    let cluster = MockCluster::new(3).expect("mock cluster");
    cluster
        .create_topic(topic, PARTITIONS, 3)
        .expect("create topic");
    for p in 0..PARTITIONS {
        cluster.partition_leader(topic, p, Some(p + 1)).unwrap();
    }
    let bootstrap = cluster.bootstrap_servers();
    MockKafka {
        cluster,
        bootstrap,
        topic,
    }
}

/// What a run through a disturbed cluster left in the topic.
struct Run {
    ids: HashSet<MessageId>,
    /// Every record in the topic, copies included.
    records: Vec<Record>,
    /// Failures the publisher reported to the relay (each one re-sent).
    failures: u64,
}

/// Relays `n` messages over 60 keys (each key's in commit order) through a
/// publisher whose deliveries may take 10 s, runs `disturb` on the cluster
/// once a tenth of them are published, and reads back everything the
/// topic then holds.
async fn run_through(
    kafka: &MockKafka,
    n: u32,
    disturb: impl AsyncFnOnce(&MockCluster<'static, DefaultProducerContext>),
) -> Run {
    let (db, outbox) = migrated(DB).await;
    let messages: Vec<NewMessage> = (0..n)
        .map(|i| candidate(i, &format!("candidate-{}", i % 60)))
        .collect();
    let ids: HashSet<MessageId> = messages.iter().map(NewMessage::id).collect();
    for chunk in messages.chunks(1000) {
        enqueue(&db, &outbox, chunk.to_vec()).await;
    }
    let publisher = KafkaPublisher::builder(&kafka.bootstrap)
        .delivery_timeout(Duration::from_secs(10))
        .set("reconnect.backoff.max.ms", "200")
        .build()
        .unwrap();
    let probe = Probe::new(publisher);
    let failures = probe.failures.clone();
    let relay = relay(&outbox, probe, fast_retry().max_attempts(10_000));

    support::wait_for("a tenth of the run published", TIMEOUT, || async {
        pending(&outbox).await <= i64::from(n) * 9 / 10
    })
    .await;
    disturb(&kafka.cluster).await;
    assert!(
        pending(&outbox).await > 0,
        "the run ended before the disturbance was over: nothing was tested"
    );
    drain_and_stop(&outbox, relay).await;

    let consumer = kafka.consumer();
    let mut total = 0;
    for p in 0..PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(kafka.topic, p, TIMEOUT)
            .expect("watermarks");
        total += usize::try_from(high - low).unwrap();
    }
    let records = consume(&consumer, total).await;
    Run {
        ids,
        records,
        failures: failures.load(Ordering::SeqCst),
    }
}

impl Run {
    /// Asserts that every message arrived, and that each key's records lie
    /// in one partition in commit order, a copy (if any) right behind its
    /// original; returns the copies.
    fn assert_complete_in_order(&self) -> Vec<&Record> {
        let mut by_key: HashMap<&[u8], Vec<&Record>> = HashMap::new();
        for r in &self.records {
            by_key.entry(&r.key).or_default().push(r);
        }
        let mut copies = Vec::new();
        for (key, mut rs) in by_key {
            let partitions: HashSet<i32> = rs.iter().map(|r| r.partition).collect();
            assert_eq!(
                partitions.len(),
                1,
                "key {key:?} spread over {partitions:?}"
            );
            rs.sort_by_key(|r| r.offset);
            for w in rs.windows(2) {
                let (a, b) = (w[0].n(), w[1].n());
                assert!(a <= b, "key {key:?}: {b} stored after {a}");
                if a == b {
                    assert_eq!(w[0].id(), w[1].id());
                    copies.push(w[1]);
                }
            }
        }
        let got: HashSet<MessageId> = self.records.iter().map(Record::id).collect();
        let lost: Vec<&MessageId> = self.ids.difference(&got).collect();
        assert!(lost.is_empty(), "lost: {lost:?}");
        assert_eq!(got.len(), self.ids.len(), "nothing else arrived");
        copies
    }
}

/// A broker fails mid-run and the partition it led gets another leader,
/// as a controller would elect one; later the broker comes back.
///
/// Nothing is lost and each key stays in order. Copies can appear, and
/// only of the partition the failed broker led: Produce requests it had
/// appended when its connections dropped lose their responses, and the
/// producer sends them again with the same sequence numbers. A real broker
/// acknowledges such a retry without appending it (it remembers the last
/// five batches per producer and partition); librdkafka's mock cluster
/// checks sequence numbers only for transactional producers, so it
/// appends them again. They are never the relay's re-sends: the publisher
/// reports no failure in this run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_lost_mid_run_loses_nothing_and_keeps_each_key_in_order() {
    let kafka = three_brokers("candidates");
    let run = run_through(&kafka, 20_000, async |cluster| {
        cluster.broker_down(1).unwrap();
        cluster.partition_leader("candidates", 0, Some(2)).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.broker_up(1).unwrap();
    })
    .await;
    assert_eq!(
        run.failures, 0,
        "no delivery failed, so the relay re-sent nothing"
    );
    let copies = run.assert_complete_in_order();
    let elsewhere: Vec<_> = copies.iter().filter(|r| r.partition != 0).collect();
    assert!(
        elsewhere.is_empty(),
        "copies outside the lost broker's partition: {elsewhere:?}"
    );
    println!(
        "a broker lost: {} records for {} messages, {} copies (partition 0)",
        run.records.len(),
        run.ids.len(),
        copies.len()
    );
}

/// Leadership of every partition moves from broker to broker ten times
/// mid-run (a rolling restart, a reassignment): every message arrives
/// once, each key in order. Requests to a broker that no longer leads are
/// refused before anything is appended, so the producer's retries on the
/// new leader add no copies, and no connection drops a response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_change_mid_run_and_each_message_arrives_once_in_order() {
    let kafka = three_brokers("candidates");
    let run = run_through(&kafka, 20_000, async |cluster| {
        for round in 1..=10 {
            for p in 0..PARTITIONS {
                cluster
                    .partition_leader("candidates", p, Some((p + round) % 3 + 1))
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(
        run.failures, 0,
        "no delivery failed, so the relay re-sent nothing"
    );
    let copies = run.assert_complete_in_order();
    assert!(copies.is_empty(), "copies: {copies:?}");
    assert_eq!(run.records.len(), run.ids.len());
}

#[test]
fn invalid_configuration_is_rejected() {
    match KafkaPublisher::new("") {
        Err(outbox::Error::InvalidConfig { field, .. }) => assert_eq!(field, "bootstrap_servers"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    match KafkaPublisher::builder("127.0.0.1:9")
        .set("no.such.property", "1")
        .build()
    {
        Err(outbox::Error::InvalidConfig { reason, .. }) => {
            assert!(reason.contains("no.such.property"), "{reason}")
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(KafkaPublisher::builder("127.0.0.1:9")
        .delivery_timeout(Duration::ZERO)
        .build()
        .is_err());
}
