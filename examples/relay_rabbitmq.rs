//! Candidate status changes, from an SQLite outbox to RabbitMQ and back out
//! through a queue consumer.
//!
//! The tracking service records each status change together with its
//! event in one transaction; the relay publishes the committed events to a
//! topic exchange with routing key `candidates`, persistent, with publisher
//! confirms and the event id as `message_id`; a consumer of a queue bound
//! to that key, as payroll or the CRM would run, reads them back.
//!
//! Needs RabbitMQ at `$AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`).
//! Run with `cargo run --example relay_rabbitmq --features amqp`.

use std::borrow::Cow;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use outbox::publisher::RabbitMqPublisher;
use outbox::{Event, Relay, SqliteOutbox};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The event other services care about.
#[derive(Debug, Serialize, Deserialize)]
struct CandidateStatusChanged {
    candidate_id: i64,
    name: String,
    from: String,
    to: String,
}

impl Event for CandidateStatusChanged {
    const EVENT_TYPE: &'static str = "CandidateStatusChanged";

    fn topic(&self) -> Cow<'_, str> {
        "candidates".into()
    }

    // Events of one candidate are published in the order they committed.
    fn partition_key(&self) -> Option<String> {
        Some(format!("candidate-{}", self.candidate_id))
    }
}

/// Changes a candidate's status and records the event, in one transaction.
async fn change_status(
    pool: &sqlx::SqlitePool,
    outbox: &SqliteOutbox,
    candidate_id: i64,
    to: &str,
) -> outbox::Result<()> {
    // IMMEDIATE: the transaction reads before it writes; started deferred,
    // it could fail with SQLITE_BUSY when the relay writes in between.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let (name, from): (String, String) =
        sqlx::query_as("SELECT name, status FROM candidates WHERE id = ?")
            .bind(candidate_id)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query("UPDATE candidates SET status = ? WHERE id = ?")
        .bind(to)
        .bind(candidate_id)
        .execute(&mut *tx)
        .await?;
    let event = CandidateStatusChanged {
        candidate_id,
        name: name.clone(),
        from: from.clone(),
        to: to.to_owned(),
    };
    let id = outbox.publish_event(&mut *tx, &event).await?.id();
    outbox.commit(tx).await?;
    println!("[tracking] {name}: {from} -> {to} (event {id})");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let run = uuid::Uuid::now_v7().simple().to_string();

    // The service's database, with the outbox beside its own table.
    let path = std::env::temp_dir().join(format!("outbox-relay-rabbitmq-{run}.db"));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5)),
        )
        .await?;
    sqlx::query("CREATE TABLE candidates (id INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO candidates VALUES (1, 'Grace Hopper', 'applied'), (2, 'Edsger Dijkstra', 'interviewing')")
        .execute(&pool)
        .await?;
    let outbox = SqliteOutbox::new(pool.clone());
    outbox.migrate().await?;

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

    change_status(&pool, &outbox, 1, "interviewing").await?;
    change_status(&pool, &outbox, 2, "offer").await?;
    change_status(&pool, &outbox, 1, "offer").await?;
    change_status(&pool, &outbox, 2, "hired").await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while outbox.pending_count().await? > 0 {
        if tokio::time::Instant::now() > deadline {
            return Err("the relay did not publish within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    println!("\nFour status changes committed -> four confirmed messages, per candidate in order.");
    Ok(())
}
