//! The relay publishing to Kafka, end to end, on any machine: the "cluster"
//! is librdkafka's in-process mock cluster, which speaks the real Kafka
//! protocol, so the same code runs against a real cluster by changing the
//! bootstrap servers.
//!
//! A recruiting service records candidate status changes in SQLite with
//! their events; the relay publishes them to the topic
//! `recruiting.candidates` as CloudEvents in binary mode (payload as the
//! record value, attributes as `ce_` headers, the candidate as the key);
//! a consumer reads them back.
//!
//! Run with `cargo run --example relay_kafka --features kafka`.

mod demo_db;

use std::time::Duration;

use demo_db::DemoDb;
use outbox::publisher::{Envelope, KafkaPublisher};
use outbox::{NewMessage, Relay, SqliteOutbox};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;

const TOPIC: &str = "recruiting.candidates";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A one-broker mock cluster with a three-partition topic.
    let cluster = MockCluster::new(1)?;
    cluster.create_topic(TOPIC, 3, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    println!("Mock Kafka cluster at {bootstrap}");

    // The service's database, with the outbox tables beside its own.
    let db = DemoDb::create("relay-kafka").await?;
    let outbox = SqliteOutbox::new(db.pool.clone());
    outbox.migrate().await?;

    // The publisher: idempotent producer (enable.idempotence, acks=all),
    // CloudEvents binary mode.
    let publisher = KafkaPublisher::builder(&bootstrap)
        .envelope(Envelope::CloudEventsBinary {
            source: "/recruiting/candidates".into(),
        })
        .build()?;
    let relay = Relay::builder(outbox.clone(), publisher).spawn()?;

    // Status changes: each commits together with its event.
    let changes = [
        ("candidate-1", "Ada Lovelace", "interviewing"),
        ("candidate-2", "Alan Turing", "applied"),
        ("candidate-1", "Ada Lovelace", "offer"),
        ("candidate-1", "Ada Lovelace", "hired"),
        ("candidate-2", "Alan Turing", "interviewing"),
    ];
    for (key, name, status) in changes {
        let mut tx = db.pool.begin().await?;
        let event = NewMessage::json(
            TOPIC,
            &serde_json::json!({ "candidate": key, "name": name, "status": status }),
        )?
        .with_partition_key(key)
        .with_event_type("CandidateStatusChanged");
        outbox.enqueue(&mut *tx, event).await?;
        outbox.commit(tx).await?;
    }

    // A downstream service reads the topic.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "payroll")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[TOPIC])?;
    for _ in 0..changes.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        let header = |name: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        println!(
            "[payroll] partition {} offset {} key {}  ce_type={} ce_id={}  {}",
            m.partition(),
            m.offset(),
            String::from_utf8_lossy(m.key().unwrap_or_default()),
            header("ce_type"),
            header("ce_id"),
            String::from_utf8_lossy(m.payload().unwrap_or_default()),
        );
    }
    println!("\nEach candidate's events share a key, so they sit in one partition, in order.");
    println!("Deduplicate on ce_id: the relay delivers at least once.");

    relay.shutdown().await?;
    db.remove().await;
    Ok(())
}
