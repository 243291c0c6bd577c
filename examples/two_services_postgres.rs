//! Two services on PostgreSQL: one writes candidates and their events, the
//! other runs the relay and publishes. They share nothing but the database:
//! the relay is woken by the NOTIFY the producer sends after each commit.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --example two_services_postgres
//! ```

use std::borrow::Cow;
use std::time::{Duration, Instant};

use outbox::{Event, InMemoryPublisher, PgOutbox, Relay};
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};

#[derive(Serialize)]
struct CandidateHired {
    candidate_id: i64,
    start_date: &'static str,
}

impl Event for CandidateHired {
    const EVENT_TYPE: &'static str = "CandidateHired";
    fn topic(&self) -> Cow<'_, str> {
        "recruiting.candidates".into()
    }
    fn partition_key(&self) -> Option<String> {
        Some(format!("candidate-{}", self.candidate_id))
    }
}

#[tokio::main]
async fn main() -> outbox::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());

    // Set-up, once per deployment.
    let (pool, outbox) = connect(&url, 8).await?;
    outbox.migrate().await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS demo_candidates (id bigint PRIMARY KEY, status text NOT NULL)",
    )
    .execute(&pool)
    .await?;

    // The relay service.
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(outbox.clone(), publisher.clone())
        .poll_interval(Duration::from_secs(5))
        .spawn()?;

    // The tracking service, on its own connection pool (its own "process").
    let count = 200;
    let started = Instant::now();
    let producer = tokio::spawn(tracking_service(url.clone(), count));
    producer.await.expect("producer task")?;
    while publisher.len() < count as usize {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "relay too slow"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "[relay]    published {} events in {:?}; first: {} {}",
        publisher.len(),
        started.elapsed(),
        publisher.messages()[0].event_type(),
        String::from_utf8_lossy(publisher.messages()[0].payload())
    );
    relay.shutdown().await?;
    println!(
        "[relay]    stopped; pending = {}",
        outbox.pending_count().await?
    );
    Ok(())
}

/// A service's pool of `connections` and its outbox, in schema
/// `outbox_demo`.
async fn connect(url: &str, connections: u32) -> outbox::Result<(PgPool, PgOutbox)> {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await?;
    let outbox = PgOutbox::builder(pool.clone())
        .schema("outbox_demo")
        .build()?;
    Ok((pool, outbox))
}

/// The candidate-tracking service: domain change + event, one transaction.
async fn tracking_service(url: String, count: i64) -> outbox::Result<()> {
    let (pool, outbox) = connect(&url, 4).await?;
    for id in 1..=count {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO demo_candidates (id, status) VALUES ($1, 'hired') \
             ON CONFLICT (id) DO UPDATE SET status = 'hired'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        outbox
            .publish_event(
                &mut *tx,
                &CandidateHired {
                    candidate_id: id,
                    start_date: "2027-01-04",
                },
            )
            .await?;
        outbox.commit(tx).await?;
    }
    println!("[tracking] committed {count} hires with their events");
    pool.close().await;
    Ok(())
}
