//! Writing your own publisher: the relay hands it batches, it answers one
//! result per message and says which failures are worth retrying.
//!
//! This one appends messages as JSON lines to a file and syncs the file
//! once per batch: `Ok` means the line is on disk. A payload that is not
//! JSON can never be written as a JSON line, so it is a **permanent**
//! failure (dead-lettered at once). An I/O error (disk full, file locked)
//! may pass, so it is **transient** (retried with backoff).
//!
//! Run with `cargo run --example custom_publisher`.

mod demo_db;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use demo_db::DemoDb;
use outbox::{NewMessage, OutboxMessage, PublishError, Publisher, Relay, SqliteOutbox};

/// Appends messages to a JSON-lines file.
#[derive(Debug)]
struct JsonLinesPublisher {
    file: Mutex<File>,
}

impl JsonLinesPublisher {
    fn open(path: &PathBuf) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// One line, or why this message can never become one.
    fn line(m: &OutboxMessage) -> Result<Vec<u8>, PublishError> {
        // The stored bytes will not change: retrying cannot help.
        let payload: serde_json::Value = m.payload_json().map_err(PublishError::permanent)?;
        let mut line = serde_json::to_vec(&serde_json::json!({
            "id": m.id(), // consumers deduplicate on it
            "topic": m.topic(),
            "key": m.partition_key(),
            "type": m.event_type(),
            "position": m.position(),
            "payload": payload,
        }))
        .map_err(PublishError::permanent)?;
        line.push(b'\n');
        Ok(line)
    }
}

#[async_trait]
impl Publisher for JsonLinesPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        // Blocking file I/O: fine for a demo; use spawn_blocking or
        // tokio::fs for a busy service.
        let mut file = self.file.lock().unwrap();
        let mut results: Vec<Result<(), PublishError>> = batch
            .iter()
            .map(|m| {
                let line = Self::line(m)?;
                // An I/O error may go away (space freed, lock released).
                file.write_all(&line).map_err(PublishError::transient)
            })
            .collect();
        // One fsync for the whole batch; if it fails, nothing written in
        // this batch is known to be durable.
        if let Err(e) = file.sync_data() {
            let msg = format!("fsync failed: {e}");
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(PublishError::transient(msg.clone()));
            }
        }
        results
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = DemoDb::create("custom").await?;
    let out_path = std::env::temp_dir().join(format!("outbox-custom-{}.jsonl", std::process::id()));
    let outbox = SqliteOutbox::new(db.pool.clone());
    outbox.migrate().await?;

    let relay = Relay::builder(outbox.clone(), JsonLinesPublisher::open(&out_path)?).spawn()?;

    let mut tx = db.pool.begin().await?;
    let good = [
        ("candidate-3", serde_json::json!({"status": "interviewing"})),
        ("candidate-3", serde_json::json!({"status": "offer"})),
        ("candidate-4", serde_json::json!({"status": "applied"})),
    ];
    for (key, payload) in &good {
        outbox
            .enqueue(
                &mut *tx,
                NewMessage::json("recruiting.candidates", payload)?.with_partition_key(*key),
            )
            .await?;
    }
    // A message a buggy producer wrote as raw bytes: not JSON.
    let bad = NewMessage::bytes("recruiting.candidates", b"\x00\xffnot json".to_vec())
        .with_partition_key("candidate-5");
    let bad_id = bad.id();
    outbox.enqueue(&mut *tx, bad).await?;
    outbox.commit(tx).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while outbox.pending_count().await? > 0 || outbox.dead_letters(10).await?.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay took too long"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await?;

    println!("Written to {}:", out_path.display());
    print!("{}", std::fs::read_to_string(&out_path)?);
    for d in outbox.dead_letters(10).await? {
        assert_eq!(d.id(), bad_id);
        println!(
            "\nDead letter {} after {} attempt(s): {}",
            d.id(),
            d.attempts,
            d.last_error
        );
    }
    println!("(inspect it, then replay_dead_letter or discard_dead_letter)");

    let _ = std::fs::remove_file(&out_path);
    db.remove().await;
    Ok(())
}
