//! Candidate status changes, from an SQLite outbox to RabbitMQ and back out
//! through a queue consumer.
//!
//! The tracking service records each status change together with its
//! event in one transaction; the relay publishes the committed events to a
//! topic exchange with routing key `candidates`, persistent, with publisher
//! confirms and the event id as `message_id`; a consumer of a queue bound
//! to that key, as payroll or the CRM would run, reads them back.
//!
//! The tracking service (`tracking_service/`) and its SQLite file
//! (`demo_db/`) are shared by relay_nats, relay_rabbitmq and relay_redis;
//! this file holds what is particular to RabbitMQ.
//!
//! Needs RabbitMQ at `$AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`).
//! Run with `cargo run --example relay_rabbitmq --features amqp`.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use outbox::publisher::RabbitMqPublisher;
use outbox::Relay;
use tracking_service::{
    record_four_changes, service_database, wait_until_published, CandidateStatusChanged,
};

mod demo_db;
mod tracking_service;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let run = uuid::Uuid::now_v7().simple().to_string();

    // The service's database, with the outbox beside its own table.
    let (db, outbox) =
        service_database("relay-rabbitmq", ["Grace Hopper", "Edsger Dijkstra"]).await?;

    // Topology for this run (in production it is declared once, by ops):
    // a topic exchange and payroll's queue bound to `candidates`.
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let exchange = format!("recruiting.{run}");
    let queue = format!("payroll.{run}");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "candidates".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("Exchange {exchange} -> queue {queue} (routing key candidates)\n");

    // Connects now, so a wrong address fails here rather than in the relay.
    let publisher = RabbitMqPublisher::connect(url.clone(), &exchange).await?;
    let relay = Relay::builder(outbox.clone(), publisher).spawn()?;

    record_four_changes(&db.pool, &outbox).await?;
    wait_until_published(&outbox, "RabbitMQ").await?;
    relay.shutdown().await?;

    // Payroll's consumer.
    println!();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "payroll".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..4 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .map_err(|_| "no message within 10 s")?
            .ok_or("consumer closed")??;
        let event: CandidateStatusChanged = serde_json::from_slice(&delivery.data)?;
        let p = &delivery.properties;
        let key = p
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("outbox-partition-key").cloned())
            .map(|v| match v {
                AMQPValue::LongString(s) => s.to_string(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        println!(
            "[payroll]  type={} message_id={} key={key}: {} is now {}",
            p.kind().as_ref().map(|s| s.as_str()).unwrap_or("-"),
            p.message_id().as_ref().map(|s| s.as_str()).unwrap_or("-"),
            event.name,
            event.to
        );
        delivery.ack(BasicAckOptions::default()).await?;
    }

    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    conn.close(200, "done".into()).await?;
    db.remove().await;
    println!("\nFour status changes committed -> four confirmed messages, per candidate in order.");
    Ok(())
}
