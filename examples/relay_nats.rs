//! Candidate status changes, from an SQLite outbox to NATS JetStream and
//! back out through a JetStream consumer.
//!
//! The tracking service records each status change together with its
//! event in one transaction; the relay publishes the committed events to
//! the subject `recruiting.<run>.candidates` with the event id as
//! `Nats-Msg-Id` (JetStream drops a redelivered copy); a pull consumer, as
//! payroll or the CRM would run, reads them back.
//!
//! The tracking service (`tracking_service/`) and its SQLite file
//! (`demo_db/`) are shared by relay_nats, relay_rabbitmq and relay_redis;
//! this file holds what is particular to NATS.
//!
//! Needs a NATS server with JetStream at `$NATS_URL` (default
//! `nats://127.0.0.1:4222`), for example `nats-server -js`.
//! Run with `cargo run --example relay_nats --features nats`.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use outbox::publisher::{Envelope, NatsPublisher};
use outbox::Relay;
use tracking_service::{
    record_four_changes, service_database, wait_until_published, CandidateStatusChanged,
};

mod demo_db;
mod tracking_service;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let run = uuid::Uuid::now_v7().simple().to_string();

    // The service's database, with the outbox beside its own table.
    let (db, outbox) = service_database("relay-nats", ["Ada Lovelace", "Alan Turing"]).await?;

    // A stream for this run (in production it is set up once, by ops).
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client.clone());
    let stream_name = format!("RECRUITING_{run}");
    let prefix = format!("recruiting.{run}.");
    let stream = js
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{prefix}>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    println!("JetStream stream {stream_name} captures {prefix}>\n");

    let publisher = NatsPublisher::new(client.clone())
        .with_subject_prefix(&prefix)
        .with_envelope(Envelope::CloudEventsBinary {
            source: "/recruiting/tracking".into(),
        });
    let relay = Relay::builder(outbox.clone(), publisher).spawn()?;

    record_four_changes(&db.pool, &outbox).await?;
    wait_until_published(&outbox, "NATS with JetStream").await?;
    relay.shutdown().await?;

    // A consumer, as payroll would run it.
    println!();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .fetch()
        .max_messages(4)
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    while let Some(m) = messages.next().await {
        let m = m?;
        let event: CandidateStatusChanged = serde_json::from_slice(&m.payload)?;
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        println!(
            "[payroll]  {} ce-type={} ce-subject={} Nats-Msg-Id={}: {} is now {}",
            m.subject,
            header("ce-type"),
            header("ce-subject"),
            header("Nats-Msg-Id"),
            event.name,
            event.to
        );
        m.ack().await?;
    }

    js.delete_stream(&stream_name).await?;
    db.remove().await;
    println!(
        "\nFour status changes committed -> four events in JetStream, per candidate in order."
    );
    Ok(())
}
