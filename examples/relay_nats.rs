//! Candidate status changes, from an SQLite outbox to NATS JetStream and
//! back out through a JetStream consumer.
//!
//! The tracking service records each status change together with its
//! event in one transaction; the relay publishes the committed events to
//! the subject `recruiting.<run>.candidates` with the event id as
//! `Nats-Msg-Id` (JetStream drops a redelivered copy); a pull consumer, as
//! payroll or the CRM would run, reads them back.
//!
//! Needs a NATS server with JetStream at `$NATS_URL` (default
//! `nats://127.0.0.1:4222`), for example `nats-server -js`.
//! Run with `cargo run --example relay_nats --features nats`.

use std::borrow::Cow;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use outbox::publisher::{Envelope, NatsPublisher};
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
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let run = uuid::Uuid::now_v7().simple().to_string();

    // The service's database, with the outbox beside its own table.
    let path = std::env::temp_dir().join(format!("outbox-relay-nats-{run}.db"));
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
    sqlx::query("INSERT INTO candidates VALUES (1, 'Ada Lovelace', 'applied'), (2, 'Alan Turing', 'interviewing')")
        .execute(&pool)
        .await?;
    let outbox = SqliteOutbox::new(pool.clone());
    outbox.migrate().await?;

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

    change_status(&pool, &outbox, 1, "interviewing").await?;
    change_status(&pool, &outbox, 2, "offer").await?;
    change_status(&pool, &outbox, 1, "offer").await?;
    change_status(&pool, &outbox, 2, "hired").await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while outbox.pending_count().await? > 0 {
        if tokio::time::Instant::now() > deadline {
            return Err("the relay did not publish within 30 s; is JetStream enabled?".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    println!(
        "\nFour status changes committed -> four events in JetStream, per candidate in order."
    );
    Ok(())
}
