//! The inbox (idempotent consumer), on every backend. Messages are real: an
//! outbox and a relay publish them to an `InMemoryPublisher`, which also
//! numbers each key's messages.

use std::sync::Arc;
use std::time::Duration;

use outbox::{
    Error, InMemoryPublisher, MessageId, NewMessage, OutboxMessage, Receipt, RelayHandle,
};
use tokio::sync::Barrier;

use crate::backend::TestInbox;
use crate::consumer_backend::{consumer_scenarios, finish_shared, ConsumerBackend, InboxBackend};
use crate::support::wait_for;

consumer_scenarios! {
    fresh_then_duplicate_in_separate_transactions,
    duplicate_leaves_the_transaction_usable,
    rolled_back_transaction_records_nothing,
    concurrent_redeliveries_have_exactly_one_fresh,
    gaps_and_stale_sequence_numbers,
    messages_without_numbers_are_deduplicated_by_id,
    purge_removes_old_ids_in_batches_and_keeps_key_sequences,
    bad_prefix_is_rejected_and_custom_prefix_is_used,
    // SQLite has no schemas, and MySQL's schemas are its databases: their
    // inbox builders take a table prefix only.
    bad_schema_is_rejected_and_custom_schema_is_used except sqlite mysql,
    migrate_is_idempotent_and_concurrent_and_rejects_newer_schemas,
    consumer_loop_in_its_own_database_applies_each_message_once,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Connections of a consumer's pool: eight concurrent receivers each hold
/// a transaction open, and one more checks on them.
const CONNECTIONS: u32 = 10;

/// A producer: the outbox of a database, migrated, and a running relay.
struct Producer<'a, B> {
    db: &'a B,
    publisher: InMemoryPublisher,
    relay: RelayHandle,
}

impl<'a, B: ConsumerBackend> Producer<'a, B> {
    async fn start(db: &'a B) -> Self {
        Self::with_key_sequences(db, true).await
    }

    async fn with_key_sequences(db: &'a B, on: bool) -> Self {
        db.migrate_outbox().await.expect("migrate the outbox");
        let publisher = InMemoryPublisher::new();
        let relay = db
            .relay(publisher.clone())
            .poll_interval(Duration::from_millis(20))
            .lease_ttl(Duration::from_secs(3))
            .key_sequences(on)
            .spawn()
            .expect("spawn the relay");
        Self {
            db,
            publisher,
            relay,
        }
    }

    /// Enqueues each message in its own transaction, in order, and returns
    /// them as published, in the same order.
    async fn publish(&self, messages: Vec<NewMessage>) -> Vec<OutboxMessage> {
        let ids: Vec<MessageId> = messages.iter().map(NewMessage::id).collect();
        for m in messages {
            self.db.enqueue_committed(m).await;
        }
        let found = || {
            let published = self.publisher.messages();
            ids.iter()
                .filter_map(|id| published.iter().find(|m| m.id() == *id).cloned())
                .collect::<Vec<OutboxMessage>>()
        };
        wait_for("the relay", TIMEOUT, || async {
            found().len() == ids.len()
        })
        .await;
        found()
    }

    async fn stop(self) {
        self.relay.shutdown().await.expect("relay shutdown");
    }
}

/// A database holding the consumer's inbox, migrated, and its effects
/// table. Producers share it (the outbox's default names do not clash with
/// the inbox's) unless a scenario gives them a database of their own.
async fn setup<B: InboxBackend>() -> Arc<B> {
    let db = B::bare(CONNECTIONS).await;
    db.migrate_inbox().await.expect("migrate the inbox");
    db.create_effects_table().await;
    Arc::new(db)
}

/// [`setup`], then a message of the key `a` and one with no key published.
async fn setup_with_keyed_and_unkeyed<B: InboxBackend>() -> (Arc<B>, Vec<OutboxMessage>) {
    let db = setup::<B>().await;
    let m = published(&*db, vec![keyed("a", 1), unkeyed(2)]).await;
    (db, m)
}

/// Publishes `messages` through a producer in `db` and stops it.
async fn published<B: ConsumerBackend>(db: &B, messages: Vec<NewMessage>) -> Vec<OutboxMessage> {
    let producer = Producer::start(db).await;
    let out = producer.publish(messages).await;
    producer.stop().await;
    out
}

fn keyed(key: &str, n: u32) -> NewMessage {
    NewMessage::json("payments", &serde_json::json!({ "key": key, "n": n }))
        .unwrap()
        .with_partition_key(key)
}

fn unkeyed(n: u32) -> NewMessage {
    NewMessage::json("payments", &serde_json::json!({ "n": n })).unwrap()
}

/// Receives `message` in its own transaction and commits.
async fn receive_committed<B: InboxBackend>(
    db: &B,
    consumer: &str,
    message: &OutboxMessage,
) -> Receipt {
    let mut tx = db.begin().await;
    let receipt = db.receive(&mut tx, consumer, message).await.unwrap();
    tx.commit().await.unwrap();
    receipt
}

/// Receives `message` twice, each time in a transaction of its own: fresh,
/// then a duplicate.
async fn assert_fresh_then_duplicate<B: InboxBackend>(
    db: &B,
    consumer: &str,
    message: &OutboxMessage,
) {
    assert_eq!(
        receive_committed(db, consumer, message).await,
        Receipt::Fresh
    );
    let again = receive_committed(db, consumer, message).await;
    assert_eq!(again, Receipt::Duplicate);
    assert!(again.is_duplicate() && !again.is_fresh());
}

/// `SELECT count(*)` of one of the default inbox's tables.
async fn inbox_rows<B: InboxBackend>(db: &B, table: &str) -> i64 {
    db.count(&format!("SELECT count(*) FROM {}", B::inbox_table(table)))
        .await
}

async fn fresh_then_duplicate_in_separate_transactions<B: InboxBackend>() {
    let db = setup::<B>().await;
    let m = published(&*db, vec![keyed("acct-1", 1), unkeyed(2)]).await;
    let (k, u) = (&m[0], &m[1]);
    assert_eq!(k.key_sequence(), Some(1));
    assert_eq!(u.key_sequence(), None);

    for msg in [k, u] {
        assert_fresh_then_duplicate(&*db, "ledger", msg).await;
    }
    // Each consumer has its own record.
    assert_eq!(receive_committed(&*db, "audit", k).await, Receipt::Fresh);
    assert_eq!(db.last_sequence("ledger", "acct-1").await.unwrap(), Some(1));
    assert_eq!(db.last_sequence("audit", "acct-1").await.unwrap(), Some(1));
    assert_eq!(db.last_sequence("other", "acct-1").await.unwrap(), None);

    // By id alone, for messages from elsewhere; also catches relay ids.
    let id = MessageId::new();
    let mut tx = db.begin().await;
    assert_eq!(
        db.receive_id(&mut tx, "ledger", id).await.unwrap(),
        Receipt::Fresh
    );
    tx.commit().await.unwrap();
    let mut tx = db.begin().await;
    assert_eq!(
        db.receive_id(&mut tx, "ledger", id).await.unwrap(),
        Receipt::Duplicate
    );
    assert_eq!(
        db.receive_id(&mut tx, "ledger", u.id()).await.unwrap(),
        Receipt::Duplicate
    );
    tx.commit().await.unwrap();
    // Outside a transaction (autocommit) works too.
    assert_eq!(
        db.receive_id_autocommit("ledger", id).await.unwrap(),
        Receipt::Duplicate
    );
    assert_eq!(inbox_rows(&*db, "inbox_messages").await, 4);
    finish_shared(db).await;
}

async fn duplicate_leaves_the_transaction_usable<B: InboxBackend>() {
    let db = setup::<B>().await;
    let m = published(&*db, vec![keyed("a", 1), keyed("a", 2)]).await;
    let (first, second) = (&m[0], &m[1]);
    receive_committed(&*db, "ledger", first).await;

    let mut tx = db.begin().await;
    assert_eq!(
        db.receive(&mut tx, "ledger", first).await.unwrap(),
        Receipt::Duplicate
    );
    // No error was raised in the transaction: it goes on (an aborted one
    // would refuse every further statement until rollback).
    B::record_effect(&mut tx, second, "ledger").await;
    assert_eq!(
        db.receive(&mut tx, "ledger", second).await.unwrap(),
        Receipt::Fresh
    );
    assert_eq!(
        db.receive(&mut tx, "ledger", second).await.unwrap(),
        Receipt::Duplicate
    );
    // A rejected consumer name is refused before the database sees it.
    for bad in ["", "nul\0byte"] {
        assert!(matches!(
            db.receive(&mut tx, bad, second).await,
            Err(Error::InvalidConfig {
                field: "consumer",
                ..
            })
        ));
    }
    assert_eq!(B::select_one(&mut tx).await, 1);
    tx.commit().await.unwrap();

    assert_eq!(db.count("SELECT count(*) FROM effects").await, 1);
    assert_eq!(
        receive_committed(&*db, "ledger", second).await,
        Receipt::Duplicate
    );
    assert_eq!(db.last_sequence("ledger", "a").await.unwrap(), Some(2));
    finish_shared(db).await;
}

async fn rolled_back_transaction_records_nothing<B: InboxBackend>() {
    let (db, m) = setup_with_keyed_and_unkeyed::<B>().await;

    for msg in &m {
        let mut tx = db.begin().await;
        assert_eq!(
            db.receive(&mut tx, "ledger", msg).await.unwrap(),
            Receipt::Fresh
        );
        B::record_effect(&mut tx, msg, "ledger").await;
        tx.rollback().await.unwrap();
    }
    assert_eq!(db.count("SELECT count(*) FROM effects").await, 0);
    assert_eq!(inbox_rows(&*db, "inbox_messages").await, 0);
    assert_eq!(db.last_sequence("ledger", "a").await.unwrap(), None);

    // The redelivery is fresh, and once committed, a duplicate.
    for msg in &m {
        assert_fresh_then_duplicate(&*db, "ledger", msg).await;
    }
    assert_eq!(db.last_sequence("ledger", "a").await.unwrap(), Some(1));
    finish_shared(db).await;
}

/// Eight tasks receive the same message at once, each in its own
/// transaction that holds its effects for a while before committing: the
/// others wait (on the primary key, or for the single writer) and see a
/// duplicate, without an error.
async fn concurrent_redeliveries_have_exactly_one_fresh<B: InboxBackend>() {
    let (db, m) = setup_with_keyed_and_unkeyed::<B>().await;

    for message in &m {
        let barrier = Arc::new(Barrier::new(8));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (db, message, barrier) = (db.clone(), message.clone(), barrier.clone());
                tokio::spawn(async move {
                    let mut tx = db.begin().await;
                    barrier.wait().await;
                    let receipt = db.receive(&mut tx, "ledger", &message).await.unwrap();
                    if receipt.is_fresh() {
                        B::record_effect(&mut tx, &message, "ledger").await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    tx.commit().await.unwrap();
                    receipt
                })
            })
            .collect();
        let mut receipts = Vec::new();
        for t in tasks {
            receipts.push(t.await.unwrap());
        }
        let fresh = receipts.iter().filter(|r| **r == Receipt::Fresh).count();
        let duplicates = receipts.iter().filter(|r| r.is_duplicate()).count();
        assert_eq!((fresh, duplicates), (1, 7), "{receipts:?}");
    }
    assert_eq!(db.count("SELECT count(*) FROM effects").await, 2);
    assert_eq!(db.last_sequence("ledger", "a").await.unwrap(), Some(1));

    // If the first receiver rolls back, a waiting one becomes fresh.
    let message = published(&*db, vec![keyed("b", 1)]).await.remove(0);
    let mut first = db.begin().await;
    assert_eq!(
        db.receive(&mut first, "ledger", &message).await.unwrap(),
        Receipt::Fresh
    );
    let waiting = {
        let (db, message) = (db.clone(), message.clone());
        tokio::spawn(async move {
            let mut tx = db.begin().await;
            let r = db.receive(&mut tx, "ledger", &message).await.unwrap();
            tx.commit().await.unwrap();
            r
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the second receiver waits");
    first.rollback().await.unwrap();
    assert_eq!(waiting.await.unwrap(), Receipt::Fresh);
    assert_eq!(db.last_sequence("ledger", "b").await.unwrap(), Some(1));
    finish_shared(db).await;
}

async fn gaps_and_stale_sequence_numbers<B: InboxBackend>() {
    let db = setup::<B>().await;
    let m = published(&*db, (1..=4).map(|n| keyed("k", n)).collect()).await;
    let seqs: Vec<Option<i64>> = m.iter().map(OutboxMessage::key_sequence).collect();
    assert_eq!(seqs, [Some(1), Some(2), Some(3), Some(4)]);

    // Consumer "accepting" applies a gap; the skipped message is then stale.
    let c = "accepting";
    assert_eq!(receive_committed(&*db, c, &m[0]).await, Receipt::Fresh);
    let gap = receive_committed(&*db, c, &m[2]).await;
    assert_eq!(
        gap,
        Receipt::Gap {
            expected: 2,
            got: 3
        }
    );
    assert!(gap.is_fresh() && gap.is_gap() && !gap.is_duplicate());
    assert_eq!(db.last_sequence(c, "k").await.unwrap(), Some(3));
    // A new id with a number not above the last: stale, a duplicate.
    assert_eq!(receive_committed(&*db, c, &m[1]).await, Receipt::Duplicate);
    assert_eq!(receive_committed(&*db, c, &m[2]).await, Receipt::Duplicate);
    // Its id is recorded all the same.
    let mut tx = db.begin().await;
    assert_eq!(
        db.receive_id(&mut tx, c, m[1].id()).await.unwrap(),
        Receipt::Duplicate
    );
    tx.rollback().await.unwrap();
    assert_eq!(db.last_sequence(c, "k").await.unwrap(), Some(3));
    assert_eq!(receive_committed(&*db, c, &m[3]).await, Receipt::Fresh);

    // Consumer "waiting" rolls back on a gap and takes the messages in order.
    let c = "waiting";
    receive_committed(&*db, c, &m[0]).await;
    let mut tx = db.begin().await;
    assert_eq!(
        db.receive(&mut tx, c, &m[3]).await.unwrap(),
        Receipt::Gap {
            expected: 2,
            got: 4
        }
    );
    tx.rollback().await.unwrap();
    assert_eq!(db.last_sequence(c, "k").await.unwrap(), Some(1));
    for msg in &m[1..] {
        assert_eq!(receive_committed(&*db, c, msg).await, Receipt::Fresh);
    }
    assert_eq!(db.last_sequence(c, "k").await.unwrap(), Some(4));

    // A key seen for the first time expects number 1.
    assert_eq!(
        receive_committed(&*db, "late", &m[2]).await,
        Receipt::Gap {
            expected: 1,
            got: 3
        }
    );
    finish_shared(db).await;
}

async fn messages_without_numbers_are_deduplicated_by_id<B: InboxBackend>() {
    let db = setup::<B>().await;
    let producer = Producer::with_key_sequences(&*db, false).await;
    let m = producer.publish(vec![keyed("k", 1), keyed("k", 2)]).await;
    producer.stop().await;
    assert!(m.iter().all(|m| m.key_sequence().is_none()));
    // In any order, each once.
    for msg in [&m[1], &m[0]] {
        assert_fresh_then_duplicate(&*db, "ledger", msg).await;
    }
    assert_eq!(db.last_sequence("ledger", "k").await.unwrap(), None);
    finish_shared(db).await;
}

async fn purge_removes_old_ids_in_batches_and_keeps_key_sequences<B: InboxBackend>() {
    let db = setup::<B>().await;
    let m = published(&*db, vec![keyed("k", 1), keyed("k", 2), unkeyed(3)]).await;

    // 25 + 3 old ids.
    let mut tx = db.begin().await;
    for _ in 0..25 {
        let r = db
            .receive_id(&mut tx, "ledger", MessageId::new())
            .await
            .unwrap();
        assert_eq!(r, Receipt::Fresh);
    }
    for msg in &m {
        assert!(db.receive(&mut tx, "ledger", msg).await.unwrap().is_fresh());
    }
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // 5 recent ids.
    let recent: Vec<MessageId> = (0..5).map(|_| MessageId::new()).collect();
    let mut tx = db.begin().await;
    for id in &recent {
        db.receive_id(&mut tx, "ledger", *id).await.unwrap();
    }
    tx.commit().await.unwrap();

    for bad in [0, -1] {
        assert!(matches!(
            db.purge_inbox(cutoff, bad).await,
            Err(Error::InvalidConfig { field: "batch", .. })
        ));
    }
    // 28 rows in batches of 10: the loop goes on past a full batch.
    assert_eq!(db.purge_inbox(cutoff, 10).await.unwrap(), 28);
    assert_eq!(inbox_rows(&*db, "inbox_messages").await, 5);
    assert_eq!(db.purge_inbox(cutoff, 10).await.unwrap(), 0);
    assert_eq!(db.last_sequence("ledger", "k").await.unwrap(), Some(2));

    // Recent ids are still recognized.
    let mut tx = db.begin().await;
    for id in &recent {
        assert_eq!(
            db.receive_id(&mut tx, "ledger", *id).await.unwrap(),
            Receipt::Duplicate
        );
    }
    tx.commit().await.unwrap();
    // The key's sequence still recognizes redeliveries of purged keyed
    // messages; a purged unkeyed message is fresh again (documented).
    assert_eq!(
        receive_committed(&*db, "ledger", &m[0]).await,
        Receipt::Duplicate
    );
    assert_eq!(
        receive_committed(&*db, "ledger", &m[1]).await,
        Receipt::Duplicate
    );
    assert_eq!(
        receive_committed(&*db, "ledger", &m[2]).await,
        Receipt::Fresh
    );

    // 5 recent ids and the 3 just received again (the two stale ones were
    // recorded too); an exact multiple of the batch ends with an empty
    // statement.
    let everything = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(db.purge_inbox(everything, 4).await.unwrap(), 8);
    assert_eq!(inbox_rows(&*db, "inbox_messages").await, 0);
    assert_eq!(inbox_rows(&*db, "inbox_keys").await, 1);
    assert_eq!(db.last_sequence("ledger", "k").await.unwrap(), Some(2));
    finish_shared(db).await;
}

/// Asserts that `result` is `InvalidIdentifier` for `what` with `value`.
fn assert_invalid_identifier<T: std::fmt::Debug>(
    result: outbox::Result<T>,
    what_expected: &str,
    bad: &str,
) {
    match result {
        Err(Error::InvalidIdentifier { what, value, .. }) => {
            assert_eq!(what, what_expected);
            assert_eq!(value, bad);
        }
        other => panic!("expected InvalidIdentifier for {what_expected} {bad:?}, got {other:?}"),
    }
}

async fn bad_prefix_is_rejected_and_custom_prefix_is_used<B: InboxBackend>() {
    let db = B::bare(CONNECTIONS).await;
    for bad in [
        "Svc_",
        "Outbox_",
        "x;drop",
        "9x",
        "a b",
        "a-b",
        &"p".repeat(46),
    ] {
        assert_invalid_identifier(db.build_inbox(None, bad), "table prefix", bad);
    }
    // Valid custom names are used as given, at full length without
    // truncation; several inboxes live side by side.
    for good in ["", "svc_", &"p".repeat(45)] {
        let inbox = db.build_inbox(None, good).unwrap();
        inbox.migrate().await.unwrap();
        assert_eq!(db.inbox_relations(None, good).await, 4, "prefix {good:?}");
    }
    db.finish().await;
}

async fn bad_schema_is_rejected_and_custom_schema_is_used<B: InboxBackend>() {
    let db = B::bare(CONNECTIONS).await;
    for bad in [
        "Outbox",
        "",
        "a-b",
        "x\";drop",
        "9lives",
        "pg_outbox",
        &"s".repeat(64),
    ] {
        assert_invalid_identifier(db.build_inbox(Some(bad), ""), "schema", bad);
    }
    // Valid custom names are used as given, at full length without
    // truncation.
    let long = "p".repeat(45);
    for (schema, prefix) in [("consumer", "svc_"), ("consumer", long.as_str())] {
        let inbox = db.build_inbox(Some(schema), prefix).unwrap();
        inbox.migrate().await.unwrap();
        assert_eq!(
            db.inbox_relations(Some(schema), prefix).await,
            4,
            "prefix {prefix:?}"
        );
    }
    db.finish().await;
}

async fn migrate_is_idempotent_and_concurrent_and_rejects_newer_schemas<B: InboxBackend>() {
    let db = Arc::new(B::bare(CONNECTIONS).await);
    // Eight inbox migrations (spawned: the future is `Send`) and the
    // outbox's, all at once, into the same new database; the default names
    // do not clash.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { db.migrate_inbox().await })
        })
        .collect();
    let (outbox_result, ()) = tokio::join!(db.migrate_outbox(), async {
        for t in tasks {
            t.await.unwrap().expect("concurrent inbox migrate");
        }
    });
    outbox_result.expect("outbox migrate beside concurrent inbox migrations");
    db.migrate_inbox().await.unwrap();
    assert_eq!(inbox_rows(&*db, "inbox_migrations").await, 1);
    db.migrate_outbox().await.unwrap();

    db.record_inbox_version(999).await;
    match db.migrate_inbox().await {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!(found, 999);
            assert_eq!(supported, 1);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    // The outbox's own version table is separate.
    db.migrate_outbox().await.unwrap();
    finish_shared(db).await;
}

/// The consumer has its own database; the broker delivers each message
/// twice, then everything again in reverse order.
async fn consumer_loop_in_its_own_database_applies_each_message_once<B: InboxBackend>() {
    let producer_db = B::bare(CONNECTIONS).await;
    let db = setup::<B>().await;
    let producer = Producer::start(&producer_db).await;
    let mut deliveries = producer.publisher.channel();
    let sent = producer
        .publish(
            (0..40)
                .map(|n| keyed(&format!("acct-{}", n % 4), n))
                .collect(),
        )
        .await;
    producer.stop().await;

    let mut stream = Vec::new();
    while let Ok(m) = deliveries.try_recv() {
        stream.push(m.clone());
        stream.push(m);
    }
    assert!(stream.len() >= 80);
    stream.extend(sent.iter().rev().cloned());

    let mut applied = 0;
    for m in &stream {
        let mut tx = db.begin().await;
        match db.receive(&mut tx, "ledger", m).await.unwrap() {
            Receipt::Duplicate => {
                tx.rollback().await.unwrap();
                continue;
            }
            Receipt::Gap { expected, got } => panic!("gap {expected}..{got}"),
            Receipt::Fresh => {}
        }
        B::record_effect(&mut tx, m, "ledger").await;
        tx.commit().await.unwrap();
        applied += 1;
    }
    assert_eq!(applied, 40);
    assert_eq!(
        db.count("SELECT count(DISTINCT message_id) FROM effects")
            .await,
        40
    );
    assert_eq!(db.count("SELECT count(*) FROM effects").await, 40);
    for k in 0..4 {
        assert_eq!(
            db.last_sequence("ledger", &format!("acct-{k}"))
                .await
                .unwrap(),
            Some(10)
        );
    }
    producer_db.finish().await;
    finish_shared(db).await;
}
