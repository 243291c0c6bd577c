//! The outbox end to end on an embedded SQLite database: no server needed.
//!
//! A recruiting firm's candidate-tracking service changes a candidate's
//! status. The change and the event that announces it commit in one
//! transaction; the relay publishes committed events; a transaction that
//! rolls back leaves no event behind.
//!
//! Run with `cargo run --example quickstart`.

mod demo_db;

use std::borrow::Cow;
use std::time::Duration;

use demo_db::DemoDb;
use outbox::{Event, FnPublisher, OutboxMessage, Relay, SqliteOutbox};
use serde::{Deserialize, Serialize};

/// The event other services (payroll, applicant communication, the CRM)
/// care about.
#[derive(Debug, Serialize, Deserialize)]
struct CandidateStatusChanged {
    candidate_id: i64,
    name: String,
    from: Option<String>,
    to: String,
}

impl Event for CandidateStatusChanged {
    const EVENT_TYPE: &'static str = "CandidateStatusChanged";
    const SCHEMA_VERSION: i32 = 1;

    fn topic(&self) -> Cow<'_, str> {
        "recruiting.candidates".into()
    }

    // Events of one candidate are published in the order they committed.
    fn partition_key(&self) -> Option<String> {
        Some(format!("candidate-{}", self.candidate_id))
    }
}

type Db = sqlx::Pool<sqlx::Sqlite>;

/// Changes a candidate's status and records the event, in one transaction.
async fn change_status(
    pool: &Db,
    outbox: &SqliteOutbox,
    candidate_id: i64,
    to: &str,
    commit: bool,
) -> outbox::Result<()> {
    // SQLite: a transaction that reads before it writes must take the write
    // lock up front, or a concurrent writer (the relay) makes it fail.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT name, status FROM candidates WHERE id = ?")
            .bind(candidate_id)
            .fetch_optional(&mut *tx)
            .await?;
    let (name, from) = row.expect("candidate exists");
    sqlx::query("UPDATE candidates SET status = ? WHERE id = ?")
        .bind(to)
        .bind(candidate_id)
        .execute(&mut *tx)
        .await?;
    let event = CandidateStatusChanged {
        candidate_id,
        name: name.clone(),
        from: Some(from.clone()),
        to: to.to_owned(),
    };
    let enqueued = outbox.publish_event(&mut *tx, &event).await?;
    if commit {
        outbox.commit(tx).await?; // commit, then wake the relay at once
        println!(
            "[tracking] {name}: {from} -> {to}   committed together with event {}",
            enqueued.id()
        );
    } else {
        tx.rollback().await?;
        println!(
            "[tracking] {name}: {from} -> {to}   ROLLED BACK (event {} is gone with it)",
            enqueued.id()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> outbox::Result<()> {
    // A fresh database file in the temp directory.
    let db = DemoDb::create("quickstart").await?;
    let pool = db.pool.clone();

    // The service's own table, and the outbox's tables beside it.
    sqlx::query("CREATE TABLE candidates (id INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO candidates VALUES (1, 'Ada Lovelace', 'interviewing'), (2, 'Alan Turing', 'applied')")
        .execute(&pool)
        .await?;
    let outbox = SqliteOutbox::new(pool.clone());
    outbox.migrate().await?;
    println!("Database ready at {}\n", db.path().display());

    // The relay. Here the "broker" is a closure that prints what payroll
    // would receive; in production it is NATS, RabbitMQ, Kafka, a webhook...
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let publisher = FnPublisher::new(move |msg: OutboxMessage| {
        let seen_tx = seen_tx.clone();
        async move {
            let event: CandidateStatusChanged = msg
                .payload_json()
                .map_err(outbox::PublishError::permanent)?;
            println!(
                "[relay]    published {} #{} (key {}, idempotency key {}): {} is now {}",
                msg.event_type(),
                msg.position(),
                msg.partition_key().unwrap_or("-"),
                msg.id(),
                event.name,
                event.to
            );
            let _ = seen_tx.send(msg.id());
            Ok(())
        }
    });
    let relay = Relay::builder(outbox.clone(), publisher).spawn()?;

    change_status(&pool, &outbox, 1, "offer", true).await?;
    change_status(&pool, &outbox, 1, "hired", true).await?;
    // Something goes wrong after the status change: the whole transaction
    // rolls back, and with it the event. Nobody hears of it.
    change_status(&pool, &outbox, 2, "rejected", false).await?;

    // Wait for the two committed events.
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
            .await
            .expect("the relay publishes within seconds");
    }
    relay.shutdown().await?;

    let statuses: Vec<(String, String)> =
        sqlx::query_as("SELECT name, status FROM candidates ORDER BY id")
            .fetch_all(&pool)
            .await?;
    println!("\nCandidates now: {statuses:?}");
    println!(
        "Events still waiting in the outbox: {} (published rows are deleted)",
        outbox.pending_count().await?
    );
    println!("Two status changes committed -> two events published, in order.");
    println!("One status change rolled back -> no event, no change.");
    db.remove().await;
    Ok(())
}
