//! Integration tests of the PostgreSQL inbox (idempotent consumer) against
//! the real local PostgreSQL. Each test gets its own database, created from
//! `OUTBOX_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and dropped at the end. Messages are real: a `PgOutbox` and a relay
//! publish them to an `InMemoryPublisher`, which also numbers each key's
//! messages.

use std::sync::Arc;
use std::time::Duration;

use outbox::{
    Error, InMemoryPublisher, MessageId, NewMessage, OutboxMessage, PgInbox, PgOutbox, Receipt,
    Relay, RelayHandle,
};
use sqlx::PgPool;
use tokio::sync::Barrier;

mod support;

use support::pg::TestDb;
use support::wait_for;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A producer: an outbox in `db` (schema `outbox`) and a running relay.
struct Producer {
    outbox: PgOutbox,
    publisher: InMemoryPublisher,
    relay: RelayHandle,
}

impl Producer {
    async fn start(pool: &PgPool) -> Self {
        Self::with_key_sequences(pool, true).await
    }

    async fn with_key_sequences(pool: &PgPool, on: bool) -> Self {
        let outbox = PgOutbox::new(pool.clone());
        outbox.migrate().await.expect("migrate the outbox");
        let publisher = InMemoryPublisher::new();
        let relay = Relay::builder(outbox.clone(), publisher.clone())
            .poll_interval(Duration::from_millis(20))
            .lease_ttl(Duration::from_secs(3))
            .key_sequences(on)
            .spawn()
            .expect("spawn the relay");
        Self {
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

/// A test database holding the producer's outbox and the consumer's inbox
/// (both in schema `outbox`: the default names do not clash) and an
/// effects table.
async fn setup() -> (TestDb, PgInbox) {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool.clone());
    inbox.migrate().await.expect("migrate the inbox");
    sqlx::query("CREATE TABLE effects (message_id uuid NOT NULL, consumer text NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    (db, inbox)
}

/// Publishes `messages` through a producer in `db` and stops it.
async fn published(db: &TestDb, messages: Vec<NewMessage>) -> Vec<OutboxMessage> {
    let producer = Producer::start(&db.pool).await;
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
    inbox: &PgInbox,
    pool: &PgPool,
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
    inbox: &PgInbox,
    pool: &PgPool,
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

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn record_effect(tx: &mut sqlx::PgConnection, message: &OutboxMessage, consumer: &str) {
    sqlx::query("INSERT INTO effects VALUES ($1, $2)")
        .bind(message.id().as_uuid())
        .bind(consumer)
        .execute(tx)
        .await
        .unwrap();
}

#[tokio::test]
async fn fresh_then_duplicate_in_separate_transactions() {
    let (db, inbox) = setup().await;
    let m = published(&db, vec![keyed("acct-1", 1), unkeyed(2)]).await;
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
    // Outside a transaction (autocommit) works too.
    assert_eq!(
        inbox.receive_id(&db.pool, "ledger", id).await.unwrap(),
        Receipt::Duplicate
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox.inbox_messages").await,
        4
    );
    db.drop().await;
}

#[tokio::test]
async fn duplicate_leaves_the_transaction_usable() {
    let (db, inbox) = setup().await;
    let m = published(&db, vec![keyed("a", 1), keyed("a", 2)]).await;
    let (first, second) = (&m[0], &m[1]);
    receive_committed(&inbox, &db.pool, "ledger", first).await;

    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(
        inbox.receive(&mut *tx, "ledger", first).await.unwrap(),
        Receipt::Duplicate
    );
    // No error was raised in the transaction: it goes on (an aborted one
    // would refuse every further statement until rollback).
    record_effect(&mut tx, second, "ledger").await;
    assert_eq!(
        inbox.receive(&mut *tx, "ledger", second).await.unwrap(),
        Receipt::Fresh
    );
    assert_eq!(
        inbox.receive(&mut *tx, "ledger", second).await.unwrap(),
        Receipt::Duplicate
    );
    // A rejected consumer name is refused before the database sees it.
    for bad in ["", "nul\0byte"] {
        assert!(matches!(
            inbox.receive(&mut *tx, bad, second).await,
            Err(Error::InvalidConfig {
                field: "consumer",
                ..
            })
        ));
    }
    let alive: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(alive, 1);
    tx.commit().await.unwrap();

    assert_eq!(count(&db.pool, "SELECT count(*) FROM effects").await, 1);
    assert_eq!(
        receive_committed(&inbox, &db.pool, "ledger", second).await,
        Receipt::Duplicate
    );
    assert_eq!(inbox.last_sequence("ledger", "a").await.unwrap(), Some(2));
    db.drop().await;
}

#[tokio::test]
async fn rolled_back_transaction_records_nothing() {
    let (db, inbox) = setup().await;
    let m = published(&db, vec![keyed("a", 1), unkeyed(2)]).await;

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
        count(&db.pool, "SELECT count(*) FROM outbox.inbox_messages").await,
        0
    );
    assert_eq!(inbox.last_sequence("ledger", "a").await.unwrap(), None);

    // The redelivery is fresh, and once committed, a duplicate.
    for msg in &m {
        assert_fresh_then_duplicate(&inbox, &db.pool, "ledger", msg).await;
    }
    assert_eq!(inbox.last_sequence("ledger", "a").await.unwrap(), Some(1));
    db.drop().await;
}

/// Eight tasks receive the same message at once, each in its own
/// transaction that holds its effects for a while before committing: the
/// others wait on the primary key and see a duplicate, without an error.
#[tokio::test]
async fn concurrent_redeliveries_have_exactly_one_fresh() {
    let (db, inbox) = setup().await;
    let m = published(&db, vec![keyed("a", 1), unkeyed(2)]).await;

    for message in &m {
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
                    let mut tx = pool.begin().await.unwrap();
                    barrier.wait().await;
                    let receipt = inbox.receive(&mut *tx, "ledger", &message).await.unwrap();
                    if receipt.is_fresh() {
                        record_effect(&mut tx, &message, "ledger").await;
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
    assert_eq!(count(&db.pool, "SELECT count(*) FROM effects").await, 2);
    assert_eq!(inbox.last_sequence("ledger", "a").await.unwrap(), Some(1));

    // If the first receiver rolls back, a waiting one becomes fresh.
    let message = published(&db, vec![keyed("b", 1)]).await.remove(0);
    let mut first = db.pool.begin().await.unwrap();
    assert_eq!(
        inbox
            .receive(&mut *first, "ledger", &message)
            .await
            .unwrap(),
        Receipt::Fresh
    );
    let waiting = {
        let (inbox, pool, message) = (inbox.clone(), db.pool.clone(), message.clone());
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            let r = inbox.receive(&mut *tx, "ledger", &message).await.unwrap();
            tx.commit().await.unwrap();
            r
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the second receiver waits");
    first.rollback().await.unwrap();
    assert_eq!(waiting.await.unwrap(), Receipt::Fresh);
    assert_eq!(inbox.last_sequence("ledger", "b").await.unwrap(), Some(1));
    db.drop().await;
}

#[tokio::test]
async fn gaps_and_stale_sequence_numbers() {
    let (db, inbox) = setup().await;
    let m = published(&db, (1..=4).map(|n| keyed("k", n)).collect()).await;
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
    assert_eq!(
        receive_committed(&inbox, &db.pool, c, &m[2]).await,
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
    db.drop().await;
}

#[tokio::test]
async fn messages_without_numbers_are_deduplicated_by_id() {
    let (db, inbox) = setup().await;
    let producer = Producer::with_key_sequences(&db.pool, false).await;
    let m = producer.publish(vec![keyed("k", 1), keyed("k", 2)]).await;
    producer.stop().await;
    assert!(m.iter().all(|m| m.key_sequence().is_none()));
    // In any order, each once.
    for msg in [&m[1], &m[0]] {
        assert_fresh_then_duplicate(&inbox, &db.pool, "ledger", msg).await;
    }
    assert_eq!(inbox.last_sequence("ledger", "k").await.unwrap(), None);
    db.drop().await;
}

#[tokio::test]
async fn purge_removes_old_ids_in_batches_and_keeps_key_sequences() {
    let (db, inbox) = setup().await;
    let m = published(&db, vec![keyed("k", 1), keyed("k", 2), unkeyed(3)]).await;

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
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // 5 recent ids.
    let recent: Vec<MessageId> = (0..5).map(|_| MessageId::new()).collect();
    let mut tx = db.pool.begin().await.unwrap();
    for id in &recent {
        inbox.receive_id(&mut *tx, "ledger", *id).await.unwrap();
    }
    tx.commit().await.unwrap();

    for bad in [0, -1] {
        assert!(matches!(
            inbox.purge_before(cutoff, bad).await,
            Err(Error::InvalidConfig { field: "batch", .. })
        ));
    }
    // 28 rows in batches of 10: the loop goes on past a full batch.
    assert_eq!(inbox.purge_before(cutoff, 10).await.unwrap(), 28);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox.inbox_messages").await,
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
        count(&db.pool, "SELECT count(*) FROM outbox.inbox_messages").await,
        0
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox.inbox_keys").await,
        1
    );
    assert_eq!(inbox.last_sequence("ledger", "k").await.unwrap(), Some(2));
    db.drop().await;
}

#[tokio::test]
async fn bad_schema_or_prefix_is_rejected() {
    let db = TestDb::new().await;
    for bad in ["Outbox", "", "a-b", "x\";drop", "9lives", &"s".repeat(64)] {
        match PgInbox::builder(db.pool.clone()).schema(bad).build() {
            Err(Error::InvalidIdentifier { what, value, .. }) => {
                assert_eq!(what, "schema");
                assert_eq!(value, bad);
            }
            other => panic!("expected InvalidIdentifier for schema {bad:?}, got {other:?}"),
        }
    }
    for bad in ["Svc_", "x;drop", "9x", "a b", &"p".repeat(46)] {
        match PgInbox::builder(db.pool.clone()).table_prefix(bad).build() {
            Err(Error::InvalidIdentifier { what, value, .. }) => {
                assert_eq!(what, "table prefix");
                assert_eq!(value, bad);
            }
            other => panic!("expected InvalidIdentifier for prefix {bad:?}, got {other:?}"),
        }
    }
    // Valid custom names are used as given, at full length without
    // truncation.
    let long = "p".repeat(45);
    for (schema, prefix) in [("consumer", "svc_"), ("consumer", long.as_str())] {
        let inbox = PgInbox::builder(db.pool.clone())
            .schema(schema)
            .table_prefix(prefix)
            .build()
            .unwrap();
        inbox.migrate().await.unwrap();
        let relations = count(
            &db.pool,
            &format!(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = '{schema}' AND c.relname IN ('{prefix}inbox_messages', \
                 '{prefix}inbox_keys', '{prefix}inbox_migrations', '{prefix}inbox_received_idx')"
            ),
        )
        .await;
        assert_eq!(relations, 4, "prefix {prefix:?}");
    }
    db.drop().await;
}

#[tokio::test]
async fn migrate_is_idempotent_and_concurrent_and_rejects_newer_schemas() {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool.clone());
    let outbox = PgOutbox::new(db.pool.clone());
    // Eight inbox migrations (spawned: the future is `Send`) and the
    // outbox's, all at once, into the same new schema.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.migrate().await })
        })
        .collect();
    let (outbox_result, ()) = tokio::join!(outbox.migrate(), async {
        for t in tasks {
            t.await.unwrap().expect("concurrent inbox migrate");
        }
    });
    // `PgOutbox::migrate` has no retry for the schema race; it may lose it.
    if outbox_result.is_err() {
        outbox.migrate().await.expect("outbox migrate, second try");
    }
    inbox.migrate().await.unwrap();
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox.inbox_migrations").await,
        1
    );

    sqlx::query("INSERT INTO outbox.inbox_migrations (version) VALUES (999)")
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
    // The outbox's own version table is separate.
    outbox.migrate().await.unwrap();
    db.drop().await;
}

/// The consumer has its own database; the broker delivers each message
/// twice, then everything again in reverse order.
#[tokio::test]
async fn consumer_loop_in_its_own_database_applies_each_message_once() {
    let producer_db = TestDb::new().await;
    let (consumer_db, inbox) = setup().await;
    let producer = Producer::start(&producer_db.pool).await;
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
        let mut tx = consumer_db.pool.begin().await.unwrap();
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
    assert_eq!(applied, 40);
    assert_eq!(
        count(
            &consumer_db.pool,
            "SELECT count(DISTINCT message_id) FROM effects"
        )
        .await,
        40
    );
    assert_eq!(
        count(&consumer_db.pool, "SELECT count(*) FROM effects").await,
        40
    );
    for k in 0..4 {
        assert_eq!(
            inbox
                .last_sequence("ledger", &format!("acct-{k}"))
                .await
                .unwrap(),
            Some(10)
        );
    }
    producer_db.drop().await;
    consumer_db.drop().await;
}
