//! Integration tests of the SQLite inbox (idempotent consumer), each on a
//! fresh database file. Messages are real: a `SqliteOutbox` and a relay
//! publish them to an `InMemoryPublisher`, which also numbers each key's
//! messages.

mod support;

use std::sync::Arc;
use std::time::Duration;

use outbox::{
    Error, InMemoryPublisher, MessageId, NewMessage, OutboxMessage, Receipt, Relay, RelayHandle,
    SqliteInbox, SqliteOutbox,
};
use sqlx::SqlitePool;
use support::sqlite::{migrated, TempDb};
use support::wait_for;
use tokio::sync::Barrier;

const TIMEOUT: Duration = Duration::from_secs(10);
/// The prefix of the database files.
const DB: &str = "outbox-inbox";

/// The consumer's database, with the inbox migrated and an effects table.
async fn consumer_db() -> (TempDb, SqliteInbox) {
    let db = TempDb::new(DB).await;
    let inbox = SqliteInbox::new(db.pool.clone());
    inbox.migrate().await.expect("migrate the inbox");
    sqlx::query("CREATE TABLE effects (message_id TEXT NOT NULL, consumer TEXT NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    (db, inbox)
}

/// A producer's database with its outbox and a running relay.
struct Producer {
    _db: TempDb,
    outbox: SqliteOutbox,
    publisher: InMemoryPublisher,
    relay: RelayHandle,
}

impl Producer {
    async fn start() -> Self {
        Self::with_key_sequences(true).await
    }

    async fn with_key_sequences(on: bool) -> Self {
        let (db, outbox) = migrated(DB).await;
        let publisher = InMemoryPublisher::new();
        let relay = Relay::builder(outbox.clone(), publisher.clone())
            .poll_interval(Duration::from_millis(20))
            .key_sequences(on)
            .spawn()
            .expect("spawn the relay");
        Self {
            _db: db,
            outbox,
            publisher,
            relay,
        }
    }

    /// Enqueues each message in its own transaction, in order, and returns
    /// them as published, in the same order.
    async fn publish(&self, messages: Vec<NewMessage>) -> Vec<OutboxMessage> {
        let ids: Vec<MessageId> = messages.iter().map(NewMessage::id).collect();
        for m in messages {
            let mut tx = self.outbox.pool().begin().await.unwrap();
            self.outbox.enqueue(&mut *tx, m).await.unwrap();
            self.outbox.commit(tx).await.unwrap();
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

/// Publishes `messages` through a producer of their own and stops it.
async fn published(messages: Vec<NewMessage>) -> Vec<OutboxMessage> {
    let producer = Producer::start().await;
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
async fn receive_committed(
    inbox: &SqliteInbox,
    pool: &SqlitePool,
    consumer: &str,
    message: &OutboxMessage,
) -> Receipt {
    let mut tx = pool.begin().await.unwrap();
    let receipt = inbox.receive(&mut *tx, consumer, message).await.unwrap();
    tx.commit().await.unwrap();
    receipt
}

/// Receives `message` twice, each time in a transaction of its own: fresh,
/// then a duplicate.
async fn assert_fresh_then_duplicate(
    inbox: &SqliteInbox,
    pool: &SqlitePool,
    consumer: &str,
    message: &OutboxMessage,
) {
    assert_eq!(
        receive_committed(inbox, pool, consumer, message).await,
        Receipt::Fresh
    );
    let again = receive_committed(inbox, pool, consumer, message).await;
    assert_eq!(again, Receipt::Duplicate);
    assert!(again.is_duplicate() && !again.is_fresh());
}

async fn record_effect(tx: &mut sqlx::SqliteConnection, message: &OutboxMessage, consumer: &str) {
    sqlx::query("INSERT INTO effects VALUES (?, ?)")
        .bind(message.id().to_string())
        .bind(consumer)
        .execute(tx)
        .await
        .unwrap();
}

async fn count(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn fresh_then_duplicate_in_separate_transactions() {
    let (db, inbox) = consumer_db().await;
    let m = published(vec![keyed("acct-1", 1), unkeyed(2)]).await;
    let (k, u) = (&m[0], &m[1]);
    assert_eq!(k.key_sequence(), Some(1));
    assert_eq!(u.key_sequence(), None);

    for msg in [k, u] {
        assert_fresh_then_duplicate(&inbox, &db.pool, "ledger", msg).await;
    }
    // Each consumer has its own record.
    assert_eq!(
        receive_committed(&inbox, &db.pool, "audit", k).await,
        Receipt::Fresh
    );
    assert_eq!(
        inbox.last_sequence("ledger", "acct-1").await.unwrap(),
        Some(1)
    );
    assert_eq!(
        inbox.last_sequence("audit", "acct-1").await.unwrap(),
        Some(1)
    );
    assert_eq!(inbox.last_sequence("other", "acct-1").await.unwrap(), None);

    // By id alone, for messages from elsewhere; also catches relay ids.
    let id = MessageId::new();
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(
        inbox.receive_id(&mut *tx, "ledger", id).await.unwrap(),
        Receipt::Fresh
    );
    tx.commit().await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(
        inbox.receive_id(&mut *tx, "ledger", id).await.unwrap(),
        Receipt::Duplicate
    );
    assert_eq!(
        inbox.receive_id(&mut *tx, "ledger", u.id()).await.unwrap(),
        Receipt::Duplicate
    );
    tx.commit().await.unwrap();
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_inbox_messages").await,
        4
    );
}

#[tokio::test]
async fn duplicate_leaves_the_transaction_usable() {
    let (db, inbox) = consumer_db().await;
    let m = published(vec![keyed("a", 1), keyed("a", 2)]).await;
    let (first, second) = (&m[0], &m[1]);
    receive_committed(&inbox, &db.pool, "ledger", first).await;

    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(
        inbox.receive(&mut *tx, "ledger", first).await.unwrap(),
        Receipt::Duplicate
    );
    // The same transaction goes on: more statements, another receipt.
    record_effect(&mut tx, second, "ledger").await;
    assert_eq!(
        inbox.receive(&mut *tx, "ledger", second).await.unwrap(),
        Receipt::Fresh
    );
    // A rejected consumer name touches nothing either.
    assert!(matches!(
        inbox.receive(&mut *tx, "", second).await,
        Err(Error::InvalidConfig {
            field: "consumer",
            ..
        })
    ));
    tx.commit().await.unwrap();

    assert_eq!(count(&db.pool, "SELECT count(*) FROM effects").await, 1);
    assert_eq!(
        receive_committed(&inbox, &db.pool, "ledger", second).await,
        Receipt::Duplicate
    );
    assert_eq!(inbox.last_sequence("ledger", "a").await.unwrap(), Some(2));
}

#[tokio::test]
async fn rolled_back_transaction_records_nothing() {
    let (db, inbox) = consumer_db().await;
    let m = published(vec![keyed("a", 1), unkeyed(2)]).await;

    for msg in &m {
        let mut tx = db.pool.begin().await.unwrap();
        assert_eq!(
            inbox.receive(&mut *tx, "ledger", msg).await.unwrap(),
            Receipt::Fresh
        );
        record_effect(&mut tx, msg, "ledger").await;
        tx.rollback().await.unwrap();
    }
    assert_eq!(count(&db.pool, "SELECT count(*) FROM effects").await, 0);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_inbox_messages").await,
        0
    );
    assert_eq!(inbox.last_sequence("ledger", "a").await.unwrap(), None);

    // The redelivery is fresh, and once committed, a duplicate.
    for msg in &m {
        assert_fresh_then_duplicate(&inbox, &db.pool, "ledger", msg).await;
    }
    assert_eq!(inbox.last_sequence("ledger", "a").await.unwrap(), Some(1));
}

#[tokio::test]
async fn concurrent_redeliveries_apply_once() {
    let (db, inbox) = consumer_db().await;
    let message = published(vec![keyed("a", 1)]).await.remove(0);

    let barrier = Arc::new(Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (inbox, pool, message, barrier) = (
                inbox.clone(),
                db.pool.clone(),
                message.clone(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                let mut tx = pool.begin().await.unwrap();
                let receipt = inbox.receive(&mut *tx, "ledger", &message).await.unwrap();
                if receipt.is_fresh() {
                    record_effect(&mut tx, &message, "ledger").await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
    assert_eq!(count(&db.pool, "SELECT count(*) FROM effects").await, 1);
}

#[tokio::test]
async fn gaps_and_stale_sequence_numbers() {
    let (db, inbox) = consumer_db().await;
    let m = published((1..=4).map(|n| keyed("k", n)).collect()).await;
    let seqs: Vec<Option<i64>> = m.iter().map(OutboxMessage::key_sequence).collect();
    assert_eq!(seqs, [Some(1), Some(2), Some(3), Some(4)]);

    // Consumer "accepting" applies a gap; the skipped message is then stale.
    let c = "accepting";
    assert_eq!(
        receive_committed(&inbox, &db.pool, c, &m[0]).await,
        Receipt::Fresh
    );
    let gap = receive_committed(&inbox, &db.pool, c, &m[2]).await;
    assert_eq!(
        gap,
        Receipt::Gap {
            expected: 2,
            got: 3
        }
    );
    assert!(gap.is_fresh() && gap.is_gap() && !gap.is_duplicate());
    assert_eq!(inbox.last_sequence(c, "k").await.unwrap(), Some(3));
    // A new id with a number not above the last: stale, a duplicate.
    assert_eq!(
        receive_committed(&inbox, &db.pool, c, &m[1]).await,
        Receipt::Duplicate
    );
    // Its id is recorded all the same.
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(
        inbox.receive_id(&mut *tx, c, m[1].id()).await.unwrap(),
        Receipt::Duplicate
    );
    tx.rollback().await.unwrap();
    assert_eq!(inbox.last_sequence(c, "k").await.unwrap(), Some(3));
    assert_eq!(
        receive_committed(&inbox, &db.pool, c, &m[3]).await,
        Receipt::Fresh
    );

    // Consumer "waiting" rolls back on a gap and takes the messages in order.
    let c = "waiting";
    receive_committed(&inbox, &db.pool, c, &m[0]).await;
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(
        inbox.receive(&mut *tx, c, &m[3]).await.unwrap(),
        Receipt::Gap {
            expected: 2,
            got: 4
        }
    );
    tx.rollback().await.unwrap();
    assert_eq!(inbox.last_sequence(c, "k").await.unwrap(), Some(1));
    for msg in &m[1..] {
        assert_eq!(
            receive_committed(&inbox, &db.pool, c, msg).await,
            Receipt::Fresh
        );
    }
    assert_eq!(inbox.last_sequence(c, "k").await.unwrap(), Some(4));

    // A key seen for the first time expects number 1.
    assert_eq!(
        receive_committed(&inbox, &db.pool, "late", &m[2]).await,
        Receipt::Gap {
            expected: 1,
            got: 3
        }
    );
}

#[tokio::test]
async fn messages_without_numbers_are_deduplicated_by_id() {
    let (db, inbox) = consumer_db().await;
    let producer = Producer::with_key_sequences(false).await;
    let m = producer.publish(vec![keyed("k", 1), keyed("k", 2)]).await;
    producer.stop().await;
    assert!(m.iter().all(|m| m.key_sequence().is_none()));
    // In any order, each once.
    for msg in [&m[1], &m[0]] {
        assert_fresh_then_duplicate(&inbox, &db.pool, "ledger", msg).await;
    }
    assert_eq!(inbox.last_sequence("ledger", "k").await.unwrap(), None);
}

#[tokio::test]
async fn purge_removes_old_ids_in_batches_and_keeps_key_sequences() {
    let (db, inbox) = consumer_db().await;
    let m = published(vec![keyed("k", 1), keyed("k", 2), unkeyed(3)]).await;

    // 25 + 3 old ids.
    let mut tx = db.pool.begin().await.unwrap();
    for _ in 0..25 {
        let r = inbox
            .receive_id(&mut *tx, "ledger", MessageId::new())
            .await
            .unwrap();
        assert_eq!(r, Receipt::Fresh);
    }
    for msg in &m {
        assert!(inbox
            .receive(&mut *tx, "ledger", msg)
            .await
            .unwrap()
            .is_fresh());
    }
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // 5 recent ids.
    let recent: Vec<MessageId> = (0..5).map(|_| MessageId::new()).collect();
    let mut tx = db.pool.begin().await.unwrap();
    for id in &recent {
        inbox.receive_id(&mut *tx, "ledger", *id).await.unwrap();
    }
    tx.commit().await.unwrap();

    assert!(matches!(
        inbox.purge_before(cutoff, 0).await,
        Err(Error::InvalidConfig { field: "batch", .. })
    ));
    // 28 rows in batches of 10: three statements.
    assert_eq!(inbox.purge_before(cutoff, 10).await.unwrap(), 28);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_inbox_messages").await,
        5
    );
    assert_eq!(inbox.purge_before(cutoff, 10).await.unwrap(), 0);
    assert_eq!(inbox.last_sequence("ledger", "k").await.unwrap(), Some(2));

    // Recent ids are still recognized.
    let mut tx = db.pool.begin().await.unwrap();
    for id in &recent {
        assert_eq!(
            inbox.receive_id(&mut *tx, "ledger", *id).await.unwrap(),
            Receipt::Duplicate
        );
    }
    tx.commit().await.unwrap();
    // The key's sequence still recognizes redeliveries of purged keyed
    // messages; a purged unkeyed message is fresh again (documented).
    assert_eq!(
        receive_committed(&inbox, &db.pool, "ledger", &m[0]).await,
        Receipt::Duplicate
    );
    assert_eq!(
        receive_committed(&inbox, &db.pool, "ledger", &m[1]).await,
        Receipt::Duplicate
    );
    assert_eq!(
        receive_committed(&inbox, &db.pool, "ledger", &m[2]).await,
        Receipt::Fresh
    );

    // 5 recent ids and the 3 just received again (the two stale ones were
    // recorded too); an exact multiple of the batch ends with an empty
    // statement.
    let everything = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(inbox.purge_before(everything, 4).await.unwrap(), 8);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_inbox_messages").await,
        0
    );
    assert_eq!(inbox.last_sequence("ledger", "k").await.unwrap(), Some(2));
}

#[tokio::test]
async fn bad_prefix_is_rejected_and_custom_prefix_is_used() {
    let db = TempDb::new(DB).await;
    for bad in ["Outbox_", "x;drop", "9x", "a-b", &"p".repeat(46)] {
        match SqliteInbox::builder(db.pool.clone())
            .table_prefix(bad)
            .build()
        {
            Err(Error::InvalidIdentifier { what, value, .. }) => {
                assert_eq!(what, "table prefix");
                assert_eq!(value, bad);
            }
            other => panic!("expected InvalidIdentifier for {bad:?}, got {other:?}"),
        }
    }
    for good in ["", "svc_", &"p".repeat(45)] {
        let inbox = SqliteInbox::builder(db.pool.clone())
            .table_prefix(good)
            .build()
            .unwrap();
        inbox.migrate().await.unwrap();
        let tables = count(
            &db.pool,
            &format!(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN \
                 ('{good}inbox_messages', '{good}inbox_keys', '{good}inbox_migrations')"
            ),
        )
        .await;
        assert_eq!(tables, 3, "prefix {good:?}");
    }
}

#[tokio::test]
async fn migrate_is_idempotent_beside_an_outbox_and_rejects_newer_schemas() {
    // The inbox and an outbox in one database: the default names do not clash.
    let (db, outbox) = migrated(DB).await;
    let inbox = SqliteInbox::new(db.pool.clone());
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.migrate().await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("concurrent migrate");
    }
    inbox.migrate().await.unwrap();
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_inbox_migrations").await,
        1
    );
    outbox.migrate().await.unwrap();

    sqlx::query("INSERT INTO outbox_inbox_migrations (version, applied_at) VALUES (999, 0)")
        .execute(&db.pool)
        .await
        .unwrap();
    match inbox.migrate().await {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!(found, 999);
            assert_eq!(supported, 1);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    // The outbox's own version table is untouched.
    outbox.migrate().await.unwrap();
}

#[tokio::test]
async fn consumer_loop_applies_each_message_once_despite_redeliveries() {
    let (db, inbox) = consumer_db().await;
    let sent = published(
        (0..20)
            .map(|n| keyed(&format!("acct-{}", n % 4), n))
            .collect(),
    )
    .await;

    // The broker delivers every message, then again, then everything once
    // more in reverse: at least once, with redeliveries out of order.
    let mut deliveries: Vec<&OutboxMessage> = Vec::new();
    for m in &sent {
        deliveries.push(m);
        deliveries.push(m);
    }
    deliveries.extend(sent.iter().rev());
    let mut applied = 0;
    for m in deliveries {
        let mut tx = db.pool.begin().await.unwrap();
        match inbox.receive(&mut *tx, "ledger", m).await.unwrap() {
            Receipt::Duplicate => {
                tx.rollback().await.unwrap();
                continue;
            }
            Receipt::Gap { expected, got } => panic!("gap {expected}..{got}"),
            Receipt::Fresh => {}
        }
        record_effect(&mut tx, m, "ledger").await;
        tx.commit().await.unwrap();
        applied += 1;
    }
    assert_eq!(applied, 20);
    assert_eq!(
        count(&db.pool, "SELECT count(DISTINCT message_id) FROM effects").await,
        20
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM effects").await, 20);
    for k in 0..4 {
        assert_eq!(
            inbox
                .last_sequence("ledger", &format!("acct-{k}"))
                .await
                .unwrap(),
            Some(5)
        );
    }
}
