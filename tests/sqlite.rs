//! What only SQLite has: one writer at a time. Producers whose
//! transactions begin with a write queue for it (for the busy timeout)
//! instead of failing. Everything both backends do is stated once in the
//! conformance suite (`tests/conformance/`), where SQLite's large batches
//! are also split over several statements.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use outbox::{InMemoryPublisher, NewMessage, OutboxMessage, Relay};
use support::sqlite::{migrated, pending};
use support::wait_for;

const TIMEOUT: Duration = Duration::from_secs(10);
/// The prefix of the database files.
const DB: &str = "outbox-test";

fn msg(topic: &str, n: u32) -> NewMessage {
    NewMessage::json(topic, &serde_json::json!({ "n": n })).expect("json")
}

fn n_of(m: &OutboxMessage) -> u32 {
    m.payload_json::<serde_json::Value>().expect("payload")["n"]
        .as_u64()
        .expect("n") as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_and_relay() {
    let (db, outbox) = migrated(DB).await;
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(outbox.clone(), publisher.clone())
        .batch_size(64)
        .spawn()
        .unwrap();
    let mut tasks = Vec::new();
    for p in 0..6u32 {
        let (pool, outbox) = (db.pool.clone(), outbox.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..40u32 {
                let mut tx = pool.begin().await.unwrap();
                // The enqueue is the transaction's first statement, a write.
                outbox
                    .enqueue(
                        &mut *tx,
                        msg("t", p * 1000 + i).with_partition_key(format!("p{p}")),
                    )
                    .await
                    .unwrap();
                outbox.commit(tx).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_for("240 messages", TIMEOUT, || async {
        publisher.len() >= 240 && pending(&outbox).await == 0
    })
    .await;
    relay.shutdown().await.unwrap();
    let published = publisher.messages();
    assert_eq!(published.len(), 240);
    let mut last: HashMap<String, u32> = HashMap::new();
    for m in &published {
        let n = n_of(m);
        if let Some(prev) = last.insert(m.partition_key().unwrap().to_owned(), n) {
            assert!(prev < n, "producer order kept per key");
        }
    }
}
