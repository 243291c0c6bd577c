//! How long a message committed by one process waits for a relay in
//! another on MySQL/MariaDB, where no LISTEN/NOTIFY exists: the relay finds
//! it on its next poll. Two outboxes on two pools stand for the two
//! processes (a commit wakes only relays that share its outbox).
//!
//! ```text
//! DATABASE_URL=mysql://root@127.0.0.1:3306/test cargo run --example mysql_wake_latency
//! ```

use std::time::Duration;

use chrono::Utc;
use outbox::sqlx::mysql::MySqlPoolOptions;
use outbox::{FnPublisher, MySqlOutbox, NewMessage, OutboxMessage, Relay};

const MESSAGES: usize = 40;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    for poll in [Duration::from_millis(200), Duration::from_secs(1)] {
        let mut waits = measure(&url, poll).await?;
        waits.sort_unstable();
        let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
        println!(
            "poll_interval {:>5} ms: commit to publish p50 {:>4} ms, p99 {:>4} ms, max {:>4} ms ({} messages)",
            poll.as_millis(),
            at(0.5),
            at(0.99),
            waits[waits.len() - 1],
            waits.len()
        );
    }
    Ok(())
}

/// Commit-to-publish waits, in milliseconds, of messages committed at
/// uneven moments by one outbox and relayed through another.
async fn measure(url: &str, poll: Duration) -> Result<Vec<i64>, Box<dyn std::error::Error>> {
    let connect = || MySqlPoolOptions::new().max_connections(4).connect(url);
    let producer = MySqlOutbox::builder(connect().await?)
        .table_prefix("wake_latency_")
        .build()?;
    producer.migrate().await?;
    let consumer = MySqlOutbox::builder(connect().await?)
        .table_prefix("wake_latency_")
        .build()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let publisher = FnPublisher::new(move |msg: OutboxMessage| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((Utc::now() - msg.created_at()).num_milliseconds());
            Ok(())
        }
    });
    let relay = Relay::builder(consumer, publisher)
        .poll_interval(poll)
        .spawn()?;
    let mut waits = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        // Uneven gaps, so commits fall anywhere in the relay's poll cycle.
        tokio::time::sleep(Duration::from_millis(37 + (i as u64 * 89) % 251)).await;
        let mut tx = producer.pool().begin().await?;
        producer
            .enqueue(&mut tx, NewMessage::json("latency", &i)?)
            .await?;
        producer.commit(tx).await?;
        waits.push(
            tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await?
                .ok_or("the relay stopped")?,
        );
    }
    relay.shutdown().await?;
    Ok(waits)
}
