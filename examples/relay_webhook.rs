//! The relay posting signed webhooks, end to end on one machine.
//!
//! A tiny receiver (standing in for a partner's payroll system) listens on
//! 127.0.0.1. It rejects requests whose `Outbox-Signature` does not verify,
//! deduplicates on `Idempotency-Key`, and answers its very first request
//! with `503` to show the relay retrying with the same key. The recruiting
//! service commits a few events; the relay delivers them.
//!
//! Run with `cargo run --example relay_webhook --features http`.

mod demo_db;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use demo_db::DemoDb;
use outbox::publisher::{verify_signature, WebhookPublisher};
use outbox::{NewMessage, Relay, RetryPolicy, SqliteOutbox};

/// Shared between sender and receiver out of band (an environment
/// variable or a secret store in real life).
const SECRET: &[u8] = b"whsec-4f9c2d17e0b84a6f9a3c5e7d1b2a8c6e";

#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<HashSet<String>>>,
    applied: Arc<Mutex<Vec<String>>>,
    first: Arc<AtomicBool>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    // 1. Authenticate: the signature covers the timestamp and the raw body.
    let signature = header("outbox-signature");
    if !verify_signature(
        SECRET,
        &signature,
        &body,
        SystemTime::now(),
        Duration::from_secs(300),
    ) {
        println!("[payroll] rejected a request with a bad signature");
        return StatusCode::UNAUTHORIZED;
    }
    let key = header("idempotency-key");
    // 2. A hiccup on the very first request: the relay will retry it.
    if r.first.swap(false, Ordering::SeqCst) {
        println!("[payroll] {key}: 503, busy (the relay retries)");
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    // 3. Deduplicate: delivery is at least once.
    if !r.seen.lock().unwrap().insert(key.clone()) {
        println!("[payroll] {key}: duplicate, already applied");
        return StatusCode::OK;
    }
    println!(
        "[payroll] {key}: verified {} #{} for {}: {}",
        header("outbox-event-type"),
        header("outbox-position"),
        header("outbox-partition-key"),
        String::from_utf8_lossy(&body)
    );
    r.applied.lock().unwrap().push(key);
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The receiver.
    let receiver = Receiver {
        seen: Arc::default(),
        applied: Arc::default(),
        first: Arc::new(AtomicBool::new(true)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks/recruiting", listener.local_addr()?);
    let app = Router::new().fallback(receive).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("Receiver listening at {url}\n");

    // The recruiting service's database and outbox.
    let db = DemoDb::create("webhook").await?;
    let outbox = SqliteOutbox::new(db.pool.clone());
    outbox.migrate().await?;

    let publisher = WebhookPublisher::builder(&url)
        .signing_secret(SECRET)
        .timeout(Duration::from_secs(5))
        .build()?;
    println!("Publisher: {publisher:?}\n"); // the secret is redacted
    let relay = Relay::builder(outbox.clone(), publisher)
        .retry(
            RetryPolicy::new()
                .initial_delay(Duration::from_millis(200))
                .max_delay(Duration::from_secs(2)),
        )
        .spawn()?;

    let events = [
        (
            "candidate-7",
            "OfferSent",
            serde_json::json!({"salary": 72000}),
        ),
        (
            "candidate-7",
            "OfferAccepted",
            serde_json::json!({"start": "2025-09-01"}),
        ),
        (
            "candidate-9",
            "CandidateHired",
            serde_json::json!({"team": "platform"}),
        ),
    ];
    for (key, event_type, payload) in &events {
        let mut tx = db.pool.begin().await?;
        let m = NewMessage::json("recruiting.offers", payload)?
            .with_partition_key(*key)
            .with_event_type(*event_type);
        outbox.enqueue(&mut *tx, m).await?;
        outbox.commit(tx).await?;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while receiver.applied.lock().unwrap().len() < events.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery took too long"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await?;
    let applied = receiver.applied.lock().unwrap().len();
    println!(
        "\n{applied} events applied once each; {} left in the outbox.",
        outbox.pending_count().await?
    );

    db.remove().await;
    Ok(())
}
