//! Integration tests of the SQLite backend, each on a fresh database file.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{
    Enqueued, Error, FnPublisher, InMemoryPublisher, MessageId, NewMessage, OrderingPolicy,
    OutboxMessage, PublishError, Relay, Retention, RetryPolicy, SqliteOutbox,
};
use support::sqlite::{migrated, pending, TempDb};
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

#[tokio::test]
async fn migrate_twice_is_fine() {
    let (db, outbox) = migrated(DB).await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox_migrations")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    let first = count().await;
    assert!(first >= 1);
    outbox.migrate().await.expect("second migrate");
    assert_eq!(pending(&outbox).await, 0);
    assert_eq!(count().await, first, "nothing applied twice");
}

#[tokio::test]
async fn newer_schema_is_rejected() {
    let (db, outbox) = migrated(DB).await;
    sqlx::query("INSERT INTO outbox_migrations (version, applied_at) VALUES (999, 0)")
        .execute(&db.pool)
        .await
        .unwrap();
    match outbox.migrate().await {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!(found, 999);
            assert!(supported < found);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn rollback_leaves_no_message() {
    let (db, outbox) = migrated(DB).await;
    let mut tx = db.pool.begin().await.unwrap();
    let r = outbox.enqueue(&mut *tx, msg("t", 1)).await.unwrap();
    assert!(matches!(r, Enqueued::Inserted(_)));
    let r = outbox
        .enqueue_batch(&mut *tx, (2..5).map(|n| msg("t", n)))
        .await
        .unwrap();
    assert_eq!(r.inserted.len(), 3);
    tx.rollback().await.unwrap();
    assert_eq!(pending(&outbox).await, 0);
}

#[tokio::test]
async fn committed_messages_are_published_exactly_once() {
    let (db, outbox) = migrated(DB).await;
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(outbox.clone(), publisher.clone())
        .spawn()
        .unwrap();

    let mut expected = Vec::new();
    for t in 0..20u32 {
        let mut tx = db.pool.begin().await.unwrap();
        for i in 0..5u32 {
            let n = t * 5 + i;
            let m = msg("orders", n)
                .with_partition_key(format!("key-{}", n % 7))
                .with_header("trace", format!("t{n}"));
            expected.push(m.id());
            let r = outbox.enqueue(&mut *tx, m).await.unwrap();
            assert!(matches!(r, Enqueued::Inserted(_)));
        }
        outbox.commit(tx).await.unwrap();
    }

    wait_for("all messages published", TIMEOUT, || async {
        publisher.len() >= expected.len() && pending(&outbox).await == 0
    })
    .await;
    relay.shutdown().await.unwrap();

    let published = publisher.messages();
    assert_eq!(published.len(), expected.len(), "each message exactly once");
    let ids: HashSet<MessageId> = published.iter().map(OutboxMessage::id).collect();
    assert_eq!(ids, expected.iter().copied().collect::<HashSet<_>>());
    // Per key, in commit order.
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &published {
        let key = m.partition_key().unwrap().to_owned();
        if let Some(prev) = last.insert(key, m.position()) {
            assert!(prev < m.position(), "key order broken");
        }
        assert_eq!(m.attempt(), 1);
        assert_eq!(m.topic(), "orders");
        assert_eq!(m.headers()["trace"], format!("t{}", n_of(m)));
    }
    assert_eq!(pending(&outbox).await, 0);
}

#[tokio::test]
async fn duplicates_are_reported() {
    let (db, outbox) = migrated(DB).await;
    let id = MessageId::new();

    let mut tx = db.pool.begin().await.unwrap();
    let first = outbox
        .enqueue(&mut *tx, msg("t", 1).with_id(id))
        .await
        .unwrap();
    assert_eq!(first, Enqueued::Inserted(id));
    let again = outbox
        .enqueue(&mut *tx, msg("t", 2).with_id(id))
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Duplicate(id));
    // The transaction is still usable.
    outbox.commit(tx).await.unwrap();
    assert_eq!(pending(&outbox).await, 1);

    let (a, b) = (MessageId::new(), MessageId::new());
    let batch = vec![
        msg("t", 3).with_id(a),
        msg("t", 4).with_id(id), // already in the outbox
        msg("t", 5).with_id(b),
        msg("t", 6).with_id(a), // repeated within the batch
    ];
    let r = outbox.enqueue_batch(&db.pool, batch).await.unwrap();
    assert_eq!(r.inserted, vec![a, b]);
    assert_eq!(r.duplicates, vec![id, a]);
    assert_eq!(pending(&outbox).await, 3);

    // Nothing at all inserted.
    let r = outbox
        .enqueue_batch(&db.pool, vec![msg("t", 7).with_id(b)])
        .await
        .unwrap();
    assert!(r.inserted.is_empty());
    assert_eq!(r.duplicates, vec![b]);
    let r = outbox
        .enqueue_batch(&db.pool, Vec::<NewMessage>::new())
        .await
        .unwrap();
    assert!(r.inserted.is_empty() && r.duplicates.is_empty());
}

#[tokio::test]
async fn invalid_message_is_rejected_before_writing() {
    let (db, outbox) = migrated(DB).await;
    let bad = NewMessage::bytes("", b"x".to_vec());
    assert!(matches!(
        outbox.enqueue(&db.pool, bad.clone()).await,
        Err(Error::InvalidMessage(_))
    ));
    assert!(matches!(
        outbox.enqueue_batch(&db.pool, vec![msg("t", 1), bad]).await,
        Err(Error::InvalidMessage(_))
    ));
    assert_eq!(pending(&outbox).await, 0);
}

#[tokio::test]
async fn large_batch_is_chunked_and_published_in_order() {
    let (db, outbox) = migrated(DB).await;
    let messages: Vec<NewMessage> = (0..5000).map(|n| msg("bulk", n)).collect();
    let order: Vec<MessageId> = messages.iter().map(NewMessage::id).collect();

    let mut tx = db.pool.begin().await.unwrap();
    let r = outbox.enqueue_batch(&mut *tx, messages).await.unwrap();
    outbox.commit(tx).await.unwrap();
    assert_eq!(r.inserted, order);
    assert!(r.duplicates.is_empty());
    assert_eq!(pending(&outbox).await, 5000);

    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(outbox.clone(), publisher.clone())
        .spawn()
        .unwrap();
    wait_for("5000 messages published", TIMEOUT, || async {
        publisher.len() >= 5000 && pending(&outbox).await == 0
    })
    .await;
    relay.shutdown().await.unwrap();

    let published = publisher.messages();
    let ids: Vec<MessageId> = published.iter().map(OutboxMessage::id).collect();
    assert_eq!(ids, order, "published once each, in enqueue order");
    assert!(published
        .windows(2)
        .all(|w| w[0].position() < w[1].position()));
    assert!(published
        .iter()
        .enumerate()
        .all(|(i, m)| n_of(m) == i as u32));
}

/// A publisher that rejects messages for good while `fail` is set, and
/// records what it accepted.
fn switchable_publisher(
    fail: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<MessageId>>>,
) -> impl outbox::Publisher {
    FnPublisher::new(move |m: OutboxMessage| {
        let fail = fail.clone();
        let accepted = accepted.clone();
        async move {
            if fail.load(Ordering::SeqCst) {
                return Err(PublishError::permanent("rejected by the broker"));
            }
            accepted.lock().unwrap().push(m.id());
            Ok(())
        }
    })
}

#[tokio::test]
async fn permanent_failure_dead_letters_then_replay_publishes() {
    let (db, outbox) = migrated(DB).await;
    let fail = Arc::new(AtomicBool::new(true));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let relay = Relay::builder(
        outbox.clone(),
        switchable_publisher(fail.clone(), accepted.clone()),
    )
    .spawn()
    .unwrap();

    let first = msg("payments", 1).with_partition_key("acct-1");
    let first_id = first.id();
    let mut tx = db.pool.begin().await.unwrap();
    outbox.enqueue(&mut *tx, first).await.unwrap();
    outbox.commit(tx).await.unwrap();

    wait_for("the dead letter", TIMEOUT, || async {
        outbox.dead_letters(10).await.unwrap().len() == 1
    })
    .await;
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].id(), first_id);
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0].last_error.contains("permanent publish failure")
            && dead[0].last_error.contains("rejected by the broker"),
        "{}",
        dead[0].last_error
    );
    assert_eq!(dead[0].message.partition_key(), Some("acct-1"));
    assert_eq!(n_of(&dead[0].message), 1);
    assert_eq!(pending(&outbox).await, 0);

    // The key stays blocked: a later message of it waits for the dead letter.
    fail.store(false, Ordering::SeqCst);
    let second = msg("payments", 2).with_partition_key("acct-1");
    let second_id = second.id();
    let other = msg("payments", 3).with_partition_key("acct-2");
    let other_id = other.id();
    let mut tx = db.pool.begin().await.unwrap();
    outbox.enqueue(&mut *tx, second).await.unwrap();
    outbox.enqueue(&mut *tx, other).await.unwrap();
    outbox.commit(tx).await.unwrap();
    wait_for("the other key's message", TIMEOUT, || async {
        accepted.lock().unwrap().contains(&other_id)
    })
    .await;
    assert!(!accepted.lock().unwrap().contains(&second_id));
    assert_eq!(pending(&outbox).await, 1);

    assert!(matches!(
        outbox.replay_dead_letter(MessageId::new()).await,
        Err(Error::DeadLetterNotFound(_))
    ));
    outbox.replay_dead_letter(first_id).await.unwrap();
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    wait_for(
        "the replayed message and the one behind it",
        TIMEOUT,
        || async { pending(&outbox).await == 0 && accepted.lock().unwrap().len() == 3 },
    )
    .await;
    relay.shutdown().await.unwrap();

    let accepted = accepted.lock().unwrap().clone();
    let pos = |id| accepted.iter().position(|x| *x == id).unwrap();
    assert!(
        pos(first_id) < pos(second_id),
        "key order kept: {accepted:?}"
    );
}

#[tokio::test]
async fn discard_and_replay_all() {
    let (db, outbox) = migrated(DB).await;
    let fail = Arc::new(AtomicBool::new(true));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let relay = Relay::builder(
        outbox.clone(),
        switchable_publisher(fail.clone(), accepted.clone()),
    )
    .spawn()
    .unwrap();

    let doomed = msg("t", 1).with_partition_key("k");
    let doomed_id = doomed.id();
    let (a, b) = (msg("t", 2), msg("t", 3).with_partition_key("j"));
    let (a_id, b_id) = (a.id(), b.id());
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .enqueue_batch(&mut *tx, vec![doomed, a, b])
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    wait_for("three dead letters", TIMEOUT, || async {
        outbox.dead_letters(10).await.unwrap().len() == 3
    })
    .await;
    fail.store(false, Ordering::SeqCst);

    outbox.discard_dead_letter(doomed_id).await.unwrap();
    assert!(matches!(
        outbox.discard_dead_letter(doomed_id).await,
        Err(Error::DeadLetterNotFound(_))
    ));
    // Discarding unblocked the key.
    let next = msg("t", 4).with_partition_key("k");
    let next_id = next.id();
    outbox.enqueue(&db.pool, next).await.unwrap();
    outbox.wake();
    wait_for("the key unblocked by the discard", TIMEOUT, || async {
        accepted.lock().unwrap().contains(&next_id)
    })
    .await;

    assert_eq!(outbox.replay_all_dead_letters().await.unwrap(), 2);
    assert_eq!(outbox.replay_all_dead_letters().await.unwrap(), 0);
    wait_for("the replayed messages", TIMEOUT, || async {
        let got = accepted.lock().unwrap().clone();
        got.contains(&a_id) && got.contains(&b_id)
    })
    .await;
    wait_for("an empty outbox", TIMEOUT, || async {
        pending(&outbox).await == 0
    })
    .await;
    relay.shutdown().await.unwrap();
    assert!(!accepted.lock().unwrap().contains(&doomed_id));
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn transient_failures_are_retried_in_key_order() {
    let (db, outbox) = migrated(DB).await;
    let calls = Arc::new(AtomicU32::new(0));
    let accepted = Arc::new(Mutex::new(Vec::<(MessageId, i32)>::new()));
    let publisher = {
        let calls = calls.clone();
        let accepted = accepted.clone();
        FnPublisher::new(move |m: OutboxMessage| {
            let calls = calls.clone();
            let accepted = accepted.clone();
            async move {
                // The first message fails twice, then goes through.
                if n_of(&m) == 1 && calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err(PublishError::transient("broker unavailable"));
                }
                accepted.lock().unwrap().push((m.id(), m.attempt()));
                Ok(())
            }
        })
    };
    let relay = Relay::builder(outbox.clone(), publisher)
        .retry(
            RetryPolicy::new()
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(50))
                .jitter(false),
        )
        .ordering(OrderingPolicy::Ordered)
        .spawn()
        .unwrap();

    let first = msg("t", 1).with_partition_key("k");
    let second = msg("t", 2).with_partition_key("k");
    let (first_id, second_id) = (first.id(), second.id());
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .enqueue_batch(&mut *tx, vec![first, second])
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();

    wait_for("both messages", TIMEOUT, || async {
        accepted.lock().unwrap().len() == 2 && pending(&outbox).await == 0
    })
    .await;
    relay.shutdown().await.unwrap();
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted, vec![(first_id, 3), (second_id, 1)]);
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn retention_keep_moves_to_published() {
    let (db, outbox) = migrated(DB).await;
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(outbox.clone(), publisher.clone())
        .retention(Retention::Keep(Duration::from_secs(3600)))
        .spawn()
        .unwrap();
    let messages: Vec<NewMessage> = (0..3)
        .map(|n| msg("kept", n).with_header("h", "v"))
        .collect();
    let order: Vec<MessageId> = messages.iter().map(NewMessage::id).collect();
    let mut tx = db.pool.begin().await.unwrap();
    outbox.enqueue_batch(&mut *tx, messages).await.unwrap();
    outbox.commit(tx).await.unwrap();

    wait_for("retained rows", TIMEOUT, || async {
        outbox.published(10).await.unwrap().len() == 3
    })
    .await;
    relay.shutdown().await.unwrap();
    assert_eq!(pending(&outbox).await, 0);
    let kept = outbox.published(10).await.unwrap();
    assert_eq!(
        kept.iter().map(OutboxMessage::id).collect::<Vec<_>>(),
        order
    );
    assert!(kept
        .iter()
        .all(|m| m.topic() == "kept" && m.headers()["h"] == "v"));
    assert_eq!(outbox.published(2).await.unwrap().len(), 2);
    assert_eq!(publisher.len(), 3);
}

#[tokio::test]
async fn standby_relay_takes_over() {
    let (db, outbox) = migrated(DB).await;
    let (p1, p2) = (InMemoryPublisher::new(), InMemoryPublisher::new());
    let ttl = Duration::from_millis(600);
    let r1 = Relay::builder(outbox.clone(), p1.clone())
        .lease_ttl(ttl)
        .poll_interval(Duration::from_millis(50))
        .spawn()
        .unwrap();
    wait_for("the first relay's lease", TIMEOUT, || async {
        r1.health().leased_buckets == 1
    })
    .await;
    let r2 = Relay::builder(outbox.clone(), p2.clone())
        .lease_ttl(ttl)
        .poll_interval(Duration::from_millis(50))
        .spawn()
        .unwrap();

    outbox
        .enqueue_batch(&db.pool, (0..50).map(|n| msg("t", n)))
        .await
        .unwrap();
    outbox.wake();
    wait_for("the first batch", TIMEOUT, || async {
        p1.len() + p2.len() >= 50 && pending(&outbox).await == 0
    })
    .await;
    // One bucket: the second relay stands by.
    assert_eq!(r1.health().leased_buckets, 1);
    assert_eq!(r2.health().leased_buckets, 0);
    assert_eq!(p1.len(), 50);
    assert!(p2.is_empty());

    // Stopping the first relay releases its lease; the second takes over.
    r1.shutdown().await.unwrap();
    wait_for("the second relay's lease", TIMEOUT, || async {
        r2.health().leased_buckets == 1
    })
    .await;
    outbox
        .enqueue_batch(&db.pool, (50..80).map(|n| msg("t", n)))
        .await
        .unwrap();
    outbox.wake();
    wait_for("the second batch", TIMEOUT, || async {
        p2.len() >= 30 && pending(&outbox).await == 0
    })
    .await;
    r2.shutdown().await.unwrap();
    assert_eq!(p1.len(), 50);
    assert_eq!(p2.len(), 30);
}

#[tokio::test]
async fn table_prefix_is_validated_and_used() {
    let db = TempDb::new(DB).await;
    for bad in ["bad-prefix", "x; DROP TABLE", "Upper", "1abc"] {
        match SqliteOutbox::builder(db.pool.clone())
            .table_prefix(bad)
            .build()
        {
            Err(Error::InvalidIdentifier { value, .. }) => assert_eq!(value, bad),
            other => panic!("{bad:?}: expected InvalidIdentifier, got {other:?}"),
        }
    }

    let custom = SqliteOutbox::builder(db.pool.clone())
        .table_prefix("svc_")
        .build()
        .unwrap();
    custom.migrate().await.unwrap();
    let plain = SqliteOutbox::builder(db.pool.clone())
        .table_prefix("")
        .build()
        .unwrap();
    plain.migrate().await.unwrap();
    custom.enqueue(&db.pool, msg("t", 1)).await.unwrap();
    assert_eq!(custom.pending_count().await.unwrap(), 1);
    assert_eq!(plain.pending_count().await.unwrap(), 0);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM svc_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
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
