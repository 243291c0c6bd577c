//! What only PostgreSQL has: LISTEN/NOTIFY and the notifications an
//! enqueue carries, the relay's own vacuum when autovacuum is off, custom
//! schemas, connections terminated by the server. Everything both backends
//! do is stated once in the conformance suite (`tests/conformance/`).
//!
//! Each test gets its own database, created from `OUTBOX_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped at the end.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{
    Error, FnPublisher, InMemoryPublisher, NewMessage, OutboxMessage, PgOutbox, Relay, RelayState,
    WakeUp,
};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

mod support;

use support::eventually;
use support::pg::TestDb;

async fn setup() -> (TestDb, PgOutbox) {
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.expect("migrate");
    (db, outbox)
}

fn msg(topic: &str, key: &str, n: u64) -> NewMessage {
    NewMessage::json(topic, &serde_json::json!({ "key": key, "n": n }))
        .unwrap()
        .with_partition_key(key)
}

fn fast_relay(outbox: &PgOutbox, publisher: impl outbox::Publisher) -> outbox::RelayBuilder {
    Relay::builder(outbox.clone(), publisher)
        .poll_interval(Duration::from_millis(20))
        .lease_ttl(Duration::from_secs(3))
}

/// Schema names are validated like table prefixes (the conformance suite
/// covers those), before anything reaches the database.
#[tokio::test]
async fn bad_schema_names_are_typed_errors() {
    let db = TestDb::new().await;
    for schema in [
        "bad-schema",
        "outbox\"; DROP TABLE x; --",
        "Outbox",
        "1outbox",
        "",
        &"s".repeat(64),
    ] {
        let err = PgOutbox::builder(db.pool.clone())
            .schema(schema)
            .build()
            .unwrap_err();
        match err {
            Error::InvalidIdentifier { what, value, .. } => {
                assert_eq!(value, schema);
                assert_eq!(what, "schema");
            }
            other => panic!("expected InvalidIdentifier, got {other:?}"),
        }
    }
    // Nothing was created.
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname NOT LIKE 'pg_%' \
         AND nspname NOT IN ('public', 'information_schema')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(schemas, 0);
    db.drop().await;
}

/// Asserts that the rows of text `sql` returns on `db` include each of
/// `expected`.
async fn assert_rows_include(db: &TestDb, sql: &str, expected: &[&str]) {
    let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(&db.pool).await.unwrap();
    for e in expected {
        assert!(rows.iter().any(|r| r == e), "{e} not in {rows:?}");
    }
}

#[tokio::test]
async fn custom_schema_and_prefix_keep_outboxes_apart() {
    let db = TestDb::new().await;
    let a = PgOutbox::builder(db.pool.clone())
        .schema("events")
        .table_prefix("billing_")
        .build()
        .unwrap();
    let b = PgOutbox::builder(db.pool.clone())
        .schema("events")
        .table_prefix("crm_")
        .build()
        .unwrap();
    a.migrate().await.unwrap();
    a.migrate().await.unwrap(); // idempotent
    b.migrate().await.unwrap();
    a.enqueue(&db.pool, msg("t", "k", 1)).await.unwrap();
    assert_eq!(a.pending_count().await.unwrap(), 1);
    assert_eq!(b.pending_count().await.unwrap(), 0);
    assert_rows_include(
        &db,
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'events' ORDER BY 1",
        &["billing_messages", "crm_messages"],
    )
    .await;

    // The migration sets aggressive per-table autovacuum.
    assert_rows_include(
        &db,
        "SELECT unnest(reloptions) FROM pg_class WHERE oid = 'events.billing_messages'::regclass",
        &[
            "autovacuum_vacuum_scale_factor=0",
            "autovacuum_vacuum_cost_delay=0",
        ],
    )
    .await;
    // And room on the per-key numbers' pages for updates in place.
    assert_rows_include(
        &db,
        "SELECT unnest(reloptions) FROM pg_class \
         WHERE oid = 'events.billing_key_sequences'::regclass",
        &["fillfactor=50"],
    )
    .await;

    // A schema newer than this crate is refused.
    sqlx::query("INSERT INTO events.billing_migrations (version) VALUES (999)")
        .execute(&db.pool)
        .await
        .unwrap();
    match a.migrate().await.unwrap_err() {
        Error::SchemaTooNew { found, .. } => assert_eq!(found, 999),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    db.drop().await;
}

/// within a test's waits: only a wake-up can explain a prompt publish.
async fn relay_woken_only_by_wake_ups(
    outbox: &PgOutbox,
    publisher: &InMemoryPublisher,
) -> outbox::RelayHandle {
    let relay = Relay::builder(outbox.clone(), publisher.clone())
        .poll_interval(Duration::from_secs(3600))
        .lease_ttl(Duration::from_secs(3600))
        .spawn()
        .unwrap();
    // Running once a round ended: it listens, and its first claim, which
    // would publish what is already there, is behind it.
    eventually("relay running", || {
        relay.health().state == RelayState::Running
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    relay
}

/// Runs `produce` with the pool of another "process" and the publisher of
/// a relay woken only by wake-ups (see [`relay_woken_only_by_wake_ups`]);
/// then stops the relay and drops the database.
async fn from_another_process(produce: impl AsyncFnOnce(&PgPool, &InMemoryPublisher)) {
    let (db, outbox) = setup().await;
    let publisher = InMemoryPublisher::new();
    let relay = relay_woken_only_by_wake_ups(&outbox, &publisher).await;
    let other_pool = db.other_process_pool().await;
    produce(&other_pool, &publisher).await;
    relay.shutdown().await.unwrap();
    other_pool.close().await;
    db.drop().await;
}

/// A relay wakes on the NOTIFY of a producer in another process: sent by
/// `PgOutbox::commit` after the commit, or inside the transaction. (The
/// in-process wake-up on commit is in the conformance suite.)
#[tokio::test]
async fn notify_wakes_the_relay_without_polling() {
    // Another "process": a second outbox on its own pool, so only the
    // NOTIFY sent after its commit can reach the relay.
    from_another_process(async |other_pool, publisher| {
        let producer = PgOutbox::new(other_pool.clone());
        let mut tx = other_pool.begin().await.unwrap();
        producer.enqueue(&mut *tx, msg("t", "b", 1)).await.unwrap();
        producer.commit(tx).await.unwrap();
        eventually("woken by NOTIFY after commit", || publisher.len() == 1).await;

        // In-transaction NOTIFY: a plain tx.commit() wakes it too.
        let notifying = PgOutbox::builder(other_pool.clone())
            .wake_up(WakeUp::InTransaction)
            .build()
            .unwrap();
        let mut tx = other_pool.begin().await.unwrap();
        notifying.enqueue(&mut *tx, msg("t", "c", 1)).await.unwrap();
        notifying
            .enqueue_batch(&mut *tx, vec![msg("t", "c", 2)])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        eventually("woken by NOTIFY in the transaction", || {
            publisher.len() == 3
        })
        .await;
    })
    .await;
}

/// A producer that commits and drops its outbox at once (a service that
/// exits) still wakes relays elsewhere for that commit, though its NOTIFY
/// was still waiting for the notify interval when the outbox went.
#[tokio::test]
async fn a_commit_just_before_the_outbox_is_dropped_still_wakes_relays() {
    from_another_process(async |other_pool, publisher| {
        let producer = PgOutbox::builder(other_pool.clone())
            .notify_interval(Duration::from_millis(500))
            .build()
            .unwrap();
        let mut tx = other_pool.begin().await.unwrap();
        producer.enqueue(&mut *tx, msg("t", "k", 1)).await.unwrap();
        producer.commit(tx).await.unwrap();
        eventually("woken by the first NOTIFY", || publisher.len() == 1).await;
        // Within the interval of the first NOTIFY: this one waits for it.
        let mut tx = other_pool.begin().await.unwrap();
        producer.enqueue(&mut *tx, msg("t", "k", 2)).await.unwrap();
        producer.commit(tx).await.unwrap();
        drop(producer);
        eventually(
            "woken by the NOTIFY sent after the outbox was dropped",
            || publisher.len() == 2,
        )
        .await;
    })
    .await;
}

/// Counts the notifications on the default outbox's channel, as relays in
/// other processes receive them, from the moment it returns.
struct NotificationCount {
    seen: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl NotificationCount {
    async fn listen(pool: &PgPool) -> Self {
        let mut listener = PgListener::connect_with(pool).await.unwrap();
        listener.listen("outbox_outbox_").await.unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while listener.recv().await.is_ok() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Self { seen, task }
    }

    fn get(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Drop for NotificationCount {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Long enough for a notification sent at a commit to arrive.
const ARRIVAL: Duration = Duration::from_millis(300);

/// With the default wake-up no producer transaction carries a notification
/// (so none can be rolled back with it): a plain commit or a rollback
/// sends none, `PgOutbox::commit` and `PgOutbox::wake` send one after the
/// commit, and it wakes relays for everything committed before it.
#[tokio::test]
async fn the_default_wake_up_notifies_after_commits_never_inside_them() {
    from_another_process(async |other_pool, publisher| {
        let producer = PgOutbox::new(other_pool.clone());
        let notifications = NotificationCount::listen(other_pool).await;
        let enqueue = |key: &'static str| {
            let producer = producer.clone();
            let pool = other_pool.clone();
            async move {
                let mut tx = pool.begin().await.unwrap();
                producer.enqueue(&mut *tx, msg("t", key, 1)).await.unwrap();
                producer
                    .enqueue_batch(&mut *tx, vec![msg("t", key, 2)])
                    .await
                    .unwrap();
                tx
            }
        };

        enqueue("plain").await.commit().await.unwrap();
        enqueue("rolled-back").await.rollback().await.unwrap();
        tokio::time::sleep(ARRIVAL).await;
        assert_eq!(notifications.get(), 0, "a producer's transaction notified");
        assert_eq!(publisher.len(), 0, "nothing woke the relay");

        // One NOTIFY after the commit wakes the relay, which finds the
        // plain commit's messages too.
        producer.commit(enqueue("committed").await).await.unwrap();
        eventually("woken by the NOTIFY after the commit", || {
            publisher.len() == 4
        })
        .await;
        eventually("one notification", || notifications.get() == 1).await;

        // A plain commit followed by `wake`.
        enqueue("woken").await.commit().await.unwrap();
        producer.wake();
        eventually("woken by wake()", || publisher.len() == 6).await;
        let keys: HashSet<String> = publisher
            .messages()
            .iter()
            .filter_map(|m| m.partition_key().map(str::to_owned))
            .collect();
        let expected: HashSet<String> = ["plain", "committed", "woken"].map(str::to_owned).into();
        assert_eq!(
            keys, expected,
            "the rolled-back messages were never published"
        );
    })
    .await;
}

/// Many producers committing at once: their transactions carry no
/// notification; after commits through `PgOutbox::commit` the outbox sends
/// at most one NOTIFY per `notify_interval`, far fewer than the commits,
/// and still wakes the relay for every one of them (it never polls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_after_concurrent_commits_are_bounded_and_wake_for_every_message() {
    const WRITERS: u64 = 16;
    const EACH: u64 = 25;
    const COMMITS: usize = (WRITERS * EACH) as usize;
    let interval = Duration::from_millis(50);
    from_another_process(async |other_pool, publisher| {
        let producer = PgOutbox::builder(other_pool.clone())
            .notify_interval(interval)
            .build()
            .unwrap();
        let notifications = NotificationCount::listen(other_pool).await;
        let run = async |through_outbox: bool, round: u64| {
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let (producer, pool) = (producer.clone(), other_pool.clone());
                    tokio::spawn(async move {
                        for i in 0..EACH {
                            let key = format!("r{round}-w{w}-{i}");
                            let mut tx = pool.begin().await.unwrap();
                            producer.enqueue(&mut *tx, msg("t", &key, i)).await.unwrap();
                            if through_outbox {
                                producer.commit(tx).await.unwrap();
                            } else {
                                tx.commit().await.unwrap();
                            }
                        }
                    })
                })
                .collect();
            for w in writers {
                w.await.unwrap();
            }
        };

        run(false, 0).await;
        tokio::time::sleep(ARRIVAL).await;
        assert_eq!(notifications.get(), 0, "a producer's transaction notified");

        let start = std::time::Instant::now();
        run(true, 1).await;
        eventually("every message published", || publisher.len() == 2 * COMMITS).await;
        tokio::time::sleep(ARRIVAL).await;
        let sent = notifications.get();
        // Every NOTIFY was sent since `start`, each at least `interval`
        // after the one before.
        let bound = (start.elapsed().as_secs_f64() / interval.as_secs_f64()) as usize + 1;
        assert!(sent >= 1, "no notification woke the relay");
        assert!(
            sent <= bound,
            "{sent} notifications for {COMMITS} commits, more than one per {interval:?} ({bound})"
        );
        assert!(
            sent < COMMITS / 4,
            "{sent} notifications for {COMMITS} commits"
        );
        let ids: HashSet<_> = publisher.messages().iter().map(|m| m.id()).collect();
        assert_eq!(ids.len(), 2 * COMMITS);
    })
    .await;
}

#[tokio::test]
async fn the_relay_vacuums_the_outbox_when_autovacuum_is_off_for_it() {
    let (db, outbox) = setup().await;
    // Whatever the server's setting, autovacuum is off for this table.
    sqlx::query("ALTER TABLE outbox.messages SET (autovacuum_enabled = false)")
        .execute(&db.pool)
        .await
        .unwrap();
    let publisher = InMemoryPublisher::new();
    let relay = fast_relay(&outbox, publisher.clone())
        .batch_size(1000)
        .stats_interval(Duration::from_millis(200))
        .spawn()
        .unwrap();
    for _ in 0..3 {
        let batch: Vec<_> = (0..5000u64)
            .map(|i| msg("t", &format!("k{i}"), i))
            .collect();
        outbox.enqueue_batch(&db.pool, batch).await.unwrap();
    }
    eventually("15,000 published", || publisher.len() == 15_000).await;
    let start = std::time::Instant::now();
    loop {
        let vacuumed: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT last_vacuum FROM pg_stat_user_tables WHERE relid = 'outbox.messages'::regclass",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if vacuumed.is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the relay never vacuumed the table"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.shutdown().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reconnects_after_its_connections_are_terminated() {
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    // The relay gets its own pool, recognisable by application name.
    let relay_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(db.options().application_name("outbox-relay-under-test"))
        .await
        .unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let relay = {
        let received = received.clone();
        Relay::builder(
            PgOutbox::new(relay_pool.clone()),
            FnPublisher::new(move |m: OutboxMessage| {
                let received = received.clone();
                async move {
                    received.lock().unwrap().push(m.id());
                    Ok(())
                }
            }),
        )
        .poll_interval(Duration::from_millis(20))
        .spawn()
        .unwrap()
    };
    let mut all = HashSet::new();
    let mut terminated = 0i64;
    // Keep cutting while messages flow: at least 20 rounds and at least
    // three cuts (the relay backs off after each, so not every round finds
    // a connection to cut).
    let mut round = 0;
    while round < 20 || (terminated < 3 && round < 300) {
        round += 1;
        let batch: Vec<_> = (0..100)
            .map(|i| {
                NewMessage::json("t", &(round * 100 + i))
                    .unwrap()
                    .with_partition_key(format!("k{}", i % 7))
            })
            .collect();
        all.extend(batch.iter().map(|m| m.id()));
        outbox.enqueue_batch(&db.pool, batch).await.unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'outbox-relay-under-test') t",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        terminated += n;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        terminated >= 3,
        "the relay's connections were cut ({terminated})"
    );
    support::eventually("everything delivered after reconnecting", || {
        let got: HashSet<_> = received.lock().unwrap().iter().copied().collect();
        all.iter().all(|id| got.contains(id))
    })
    .await;
    // A cut between publish and acknowledgement leaves the message pending:
    // it is published again (a duplicate) and then acknowledged.
    support::wait_for("the outbox drained", Duration::from_secs(60), || async {
        outbox.pending_count().await.unwrap() == 0
    })
    .await;
    relay.shutdown().await.unwrap();
    let got = received.lock().unwrap().clone();
    eprintln!(
        "{} messages, {terminated} connections terminated, {} duplicates",
        all.len(),
        got.len() - all.len()
    );
    assert_eq!(outbox.pending_count().await.unwrap(), 0);
    relay_pool.close().await;
    db.drop().await;
}

/// A relay busy with a long publish keeps reading its notifications: the
/// server's NOTIFY queue (shared by the whole cluster, 8 GB, and producers'
/// commits fail when it is full) drains while the relay does not wait for
/// wake-ups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_drained_while_the_relay_is_busy() {
    let (db, outbox) = setup().await;
    let busy = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let publisher = {
        let (busy, release) = (busy.clone(), release.clone());
        FnPublisher::new(move |_m: OutboxMessage| {
            let (busy, release) = (busy.clone(), release.clone());
            async move {
                busy.notify_one();
                release.notified().await;
                Ok(())
            }
        })
    };
    let mut tx = db.pool.begin().await.unwrap();
    outbox.enqueue(&mut *tx, msg("t", "k", 1)).await.unwrap();
    tx.commit().await.unwrap();
    let relay = Relay::builder(outbox.clone(), publisher)
        .poll_interval(Duration::from_millis(50))
        .lease_ttl(Duration::from_secs(60))
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), busy.notified())
        .await
        .expect("the relay calls the publisher");

    // Far more than socket buffers hold: unread, they stay in the queue.
    let channel: String =
        sqlx::query_scalar("SELECT channel FROM pg_listening_channels() AS channel LIMIT 0")
            .fetch_optional(&db.pool)
            .await
            .unwrap()
            .unwrap_or_else(|| "outbox_outbox_".to_owned());
    sqlx::query(
        "SELECT count(pg_notify($1, repeat('x', 200) || g)) FROM generate_series(1, 100000) g",
    )
    .bind(channel)
    .execute(&db.pool)
    .await
    .unwrap();
    let usage = || async {
        sqlx::query_scalar::<_, f64>("SELECT pg_notification_queue_usage()")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    let mut drained = false;
    for _ in 0..100 {
        if usage().await == 0.0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    release.notify_waiters();
    release.notify_one();
    assert!(
        drained,
        "the NOTIFY queue kept {} of its space while the relay was busy",
        usage().await
    );
    relay.shutdown().await.unwrap();
    db.drop().await;
}

/// A transaction of any size enqueues: a million messages over a hundred
/// thousand keys in one transaction, while another producer keeps writing
/// single messages beside it (a bulk import must not exhaust the server's
/// shared lock table for everyone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_enqueues_a_million_messages_over_many_keys() {
    let (db, outbox) = setup().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beside = tokio::spawn({
        let (pool, outbox, stop) = (db.pool.clone(), outbox.clone(), stop.clone());
        async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut tx = pool.begin().await.unwrap();
                outbox
                    .enqueue(&mut *tx, msg("beside", &format!("b{}", n % 10), n))
                    .await
                    .expect("a producer beside the bulk transaction enqueues");
                tx.commit().await.unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        }
    });
    let total: u64 = 1_000_000;
    let mut tx = db.pool.begin().await.unwrap();
    for chunk in 0..(total / 50_000) {
        let batch: Vec<NewMessage> = (0..50_000u64)
            .map(|i| {
                let n = chunk * 50_000 + i;
                NewMessage::bytes("bulk", n.to_le_bytes().to_vec())
                    .with_partition_key(format!("k{}", n % 100_000))
            })
            .collect();
        let done = outbox.enqueue_batch(&mut *tx, batch).await.unwrap();
        assert_eq!(done.inserted.len(), 50_000);
    }
    tx.commit().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let beside = beside.await.unwrap();
    assert!(beside > 0);
    let bulk: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages WHERE topic = 'bulk'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(bulk, total as i64);
    db.drop().await;
}

/// Eight producers each enqueue 20,000 distinct keys in one transaction at
/// the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bulk_transactions_at_once_over_distinct_keys() {
    let (db, outbox) = setup().await;
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let (pool, outbox) = (db.pool.clone(), outbox.clone());
        writers.push(tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            let batch: Vec<NewMessage> = (0..20_000u64)
                .map(|i| msg("bulk", &format!("w{w}-k{i}"), i))
                .collect();
            outbox.enqueue_batch(&mut *tx, batch).await?;
            tx.commit().await.unwrap();
            Ok::<_, Error>(())
        }));
    }
    for w in writers {
        w.await.unwrap().expect("a bulk transaction enqueues");
    }
    assert_eq!(outbox.pending_count().await.unwrap(), 160_000);
    db.drop().await;
}

/// A `/proc/self/status` field, in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a size in kB");
    kib * 1024
}

/// Messages of the memory test, and their payload size.
const LARGE_MESSAGES: usize = 120;
const LARGE_PAYLOAD: usize = 4 << 20;
/// The relay's byte budget in the memory test.
const TEST_BATCH_BYTES: usize = 16 << 20;

/// The relay process of `a_relay_s_memory_stays_within_its_byte_budget`:
/// does nothing unless started by it. Drains the outbox at
/// `OUTBOX_MEMORY_CHILD_DB` and prints how far its resident memory peaked
/// above where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_child_relay() {
    let Ok(url) = std::env::var("OUTBOX_MEMORY_CHILD_DB") else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    let outbox = PgOutbox::new(pool);
    // The peak from here on: writing 5 resets the high-water mark to the
    // resident size now.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let start = proc_status_bytes("VmRSS:");
    let published = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = published.clone();
    let publisher = FnPublisher::new(move |m: OutboxMessage| {
        assert_eq!(m.payload().len(), LARGE_PAYLOAD);
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok(()) }
    });
    let relay = fast_relay(&outbox, publisher)
        .max_batch_bytes(TEST_BATCH_BYTES)
        .spawn()
        .unwrap();
    eventually("the large messages published", || {
        published.load(std::sync::atomic::Ordering::SeqCst) >= LARGE_MESSAGES
    })
    .await;
    relay.shutdown().await.unwrap();
    let peak = proc_status_bytes("VmHWM:");
    let after = proc_status_bytes("VmRSS:");
    println!(
        "memory-child: peak_growth={} after_growth={}",
        peak.saturating_sub(start),
        after.saturating_sub(start)
    );
}

/// 120 committed messages of 4 MiB (480 MiB) drained by a relay whose
/// byte budget is 16 MiB: the relay's process peaks at a small multiple of
/// the budget above where it started, not at the backlog's size. The relay
/// runs in a process of its own (this test binary again), so that nothing
/// else moves its memory.
#[tokio::test]
async fn a_relay_s_memory_stays_within_its_byte_budget() {
    let (db, _) = setup().await;
    let outbox = PgOutbox::builder(db.pool.clone())
        .max_payload_bytes(LARGE_PAYLOAD)
        .build()
        .unwrap();
    for chunk in 0..LARGE_MESSAGES / 10 {
        let messages: Vec<_> = (0..10)
            .map(|i| NewMessage::bytes("large", vec![(chunk * 10 + i) as u8; LARGE_PAYLOAD]))
            .collect();
        let mut tx = db.pool.begin().await.unwrap();
        outbox.enqueue_batch(&mut *tx, messages).await.unwrap();
        tx.commit().await.unwrap();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "memory_child_relay",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OUTBOX_MEMORY_CHILD_DB", db.url())
        .output()
        .expect("run the relay process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "relay process failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
    };
    let peak = field("peak_growth=");
    println!(
        "relay memory: peak +{} MiB, after shutdown +{} MiB, for {} MiB drained under a {} MiB budget",
        peak >> 20,
        field("after_growth=") >> 20,
        (LARGE_MESSAGES * LARGE_PAYLOAD) >> 20,
        TEST_BATCH_BYTES >> 20
    );
    // Two rounds in memory at once (prefetch), each the budget plus one
    // payload, each held as the row read and the message decoded from it,
    // and room for the allocator's slack; without the budget the relay
    // peaks at about twice the backlog (measured: +1006 MiB).
    let bound = (6 * (TEST_BATCH_BYTES + LARGE_PAYLOAD) + (64 << 20)) as u64;
    assert!(
        peak < bound,
        "the relay peaked {} MiB above its start (bound {} MiB)",
        peak >> 20,
        bound >> 20
    );
    assert_eq!(outbox.pending_count().await.unwrap(), 0);
    db.drop().await;
}

/// A monitoring user with SELECT on the outbox tables and nothing else
/// reads the stats; only the last position assigned, which needs the
/// sequence, is missing.
#[tokio::test]
async fn stats_need_no_more_than_select_on_the_tables() {
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    outbox
        .enqueue(
            &db.pool,
            NewMessage::json("t", &serde_json::json!({})).unwrap(),
        )
        .await
        .unwrap();
    let role = format!("monitor_{}", uuid::Uuid::now_v7().simple());
    for grant in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT USAGE ON SCHEMA outbox TO {role}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA outbox TO {role}"),
    ] {
        sqlx::query(&grant).execute(&db.pool).await.unwrap();
    }
    let monitor = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(db.options().username(&role))
        .await
        .unwrap();
    let stats = PgOutbox::new(monitor.clone()).stats().await.unwrap();
    assert_eq!(stats.pending, 1, "{stats:?}");
    assert_eq!(stats.last_position, None, "{stats:?}");
    assert_eq!(outbox.stats().await.unwrap().last_position, Some(1));
    monitor.close().await;
    let owned = format!("DROP OWNED BY {role}");
    sqlx::query(&owned).execute(&db.pool).await.unwrap();
    db.drop().await;
    let admin = PgPoolOptions::new()
        .connect(&support::pg::admin_url())
        .await
        .unwrap();
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&admin)
        .await
        .unwrap();
}

/// The index entries read so far from each index of schema `outbox`, as
/// a function of the index's name, once `done` holds for them or twenty
/// seconds have passed. Backends report their counts as they exit, a
/// moment after, except one that lives on a while: a relay's wake-up
/// listener holds one of the pool's connections, which may have claimed
/// before, and releases it (`UNLISTEN *`) as it is dropped, after the
/// pool closed; PostgreSQL reports an idle backend's counts after ten
/// seconds (seen: 9.5 s, one run in three).
async fn index_entries_read(
    pool: &PgPool,
    done: impl Fn(&dyn Fn(&str) -> i64) -> bool,
) -> impl Fn(&str) -> i64 {
    let mut read = std::collections::HashMap::new();
    for _ in 0..200 {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT indexrelname::text, idx_tup_read FROM pg_stat_user_indexes \
             WHERE schemaname = 'outbox'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        read = rows.into_iter().collect();
        if done(&|name: &str| read.get(name).copied().unwrap_or(0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A new snapshot of the statistics on the next read.
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(pool)
            .await
            .unwrap();
    }
    move |name: &str| read.get(name).copied().unwrap_or(0)
}

/// Four relays share the buckets, and each claim reads its own relay's
/// messages only: the entries read from the ready messages' indexes stay
/// about the messages sent (a claim that walked every ready message in
/// position order to find its buckets' read each message about once per
/// relay: four times as many).
#[tokio::test]
async fn relays_holding_some_buckets_read_only_their_own_messages() {
    let (db, outbox) = setup().await;
    let rows = 20_000usize;
    let published = Arc::new(AtomicUsize::new(0));
    let relays: Vec<outbox::RelayHandle> = (0..4)
        .map(|_| {
            let count = published.clone();
            let publisher = FnPublisher::new(move |_m: OutboxMessage| {
                count.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            });
            // The enqueue's notification wakes them: no poll reads the
            // table again while they wait.
            fast_relay(&outbox, publisher)
                .batch_size(rows)
                .poll_interval(Duration::from_secs(10))
                .spawn()
                .unwrap()
        })
        .collect();
    eventually("the relays hold 16 buckets each", || {
        relays.iter().all(|r| r.health().leased_buckets == 16)
    })
    .await;
    let batch: Vec<NewMessage> = (0..rows as u64)
        .map(|i| msg("spread", &format!("k{}", i % 1000), i))
        .collect();
    // All committed at once: each relay's first claim finds all of its
    // share, among everybody's.
    let mut tx = db.pool.begin().await.unwrap();
    outbox.enqueue_batch(&mut *tx, batch).await.unwrap();
    tx.commit().await.unwrap();
    eventually("every message published", || {
        published.load(Ordering::SeqCst) >= rows
    })
    .await;
    assert!(
        relays.iter().all(|r| r.health().leased_buckets == 16),
        "the buckets stayed where they were"
    );
    for relay in relays {
        relay.shutdown().await.unwrap();
    }
    assert_eq!(published.load(Ordering::SeqCst), rows);
    // The relays' backends report their counts when they exit.
    db.pool.close().await;
    let other = db.other_process_pool().await;
    let read = index_entries_read(&other, |read| read("messages_bucket_idx") >= rows as i64).await;
    let (by_bucket, by_position) = (read("messages_bucket_idx"), read("messages_ready_idx"));
    eprintln!("{by_bucket} entries read by bucket, {by_position} in position order");
    assert!(
        by_bucket >= rows as i64 && by_bucket + by_position < 2 * rows as i64,
        "{by_bucket} entries read by bucket and {by_position} in position order \
         to claim {rows} messages"
    );
    other.close().await;
    db.drop().await;
}

/// Autovacuum ran while the outbox was empty, so the statistics say the
/// messages table holds nothing; then a bulk import arrives before any
/// analyze. The relay's statements are prepared, and a generic plan made
/// from those statistics must still find each acknowledged message through
/// the primary key: the index entries read stay in proportion to the
/// messages (a plan that joined the positions to a scan of the whole index
/// for each read about rows × batch / 2 of them, seconds a batch).
#[tokio::test]
async fn acknowledgements_find_their_messages_by_position_whatever_the_statistics_say() {
    let db = TestDb::with_options(PgPoolOptions::new().max_connections(10).after_connect(
        |conn, _| {
            Box::pin(async move {
                // The plan PostgreSQL settles on after a few runs, at once.
                sqlx::query("SET plan_cache_mode = force_generic_plan")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        },
    ))
    .await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    // Nothing corrects the statistics during the test.
    sqlx::query("ALTER TABLE outbox.messages SET (autovacuum_enabled = false)")
        .execute(&db.pool)
        .await
        .unwrap();
    let rows = 20_000u64;
    let batch: Vec<NewMessage> = (0..rows)
        .map(|i| msg("import", &format!("k{}", i % 1000), i))
        .collect();
    let import = async || {
        for chunk in batch.chunks(5_000) {
            outbox
                .enqueue_batch(&db.pool, chunk.to_vec())
                .await
                .unwrap();
        }
    };
    // Earlier traffic, all published (deleted), then a vacuum of the
    // table as it stood: pages, no rows (kept, as a vacuum that cannot
    // take the lock to truncate them keeps them).
    import().await;
    sqlx::query("DELETE FROM outbox.messages")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("VACUUM (TRUNCATE false) outbox.messages")
        .execute(&db.pool)
        .await
        .unwrap();
    let (reltuples, relpages): (f32, i32) = sqlx::query_as(
        "SELECT reltuples, relpages FROM pg_class WHERE oid = 'outbox.messages'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        reltuples == 0.0 && relpages > 0,
        "the statistics say the table is empty: {reltuples} rows in {relpages} pages"
    );
    import().await;

    // Every fourth message fails once and is retried; every fourth but
    // one fails for good and becomes a dead letter at its second attempt:
    // the retry and dead-letter statements find their messages too.
    let tried: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let published = Arc::new(AtomicUsize::new(0));
    let (seen, count) = (tried.clone(), published.clone());
    let publisher = FnPublisher::new(move |m: OutboxMessage| {
        let n = m.payload_json::<serde_json::Value>().unwrap()["n"]
            .as_u64()
            .unwrap();
        let first = seen.lock().unwrap().insert(n);
        let fails = (n.is_multiple_of(4) && first) || n % 4 == 1;
        if !fails {
            count.fetch_add(1, Ordering::SeqCst);
        }
        async move {
            if fails {
                Err(outbox::PublishError::transient("refused"))
            } else {
                Ok(())
            }
        }
    });
    let relay = fast_relay(&outbox, publisher)
        .batch_size(500)
        .ordering(outbox::OrderingPolicy::Unordered)
        .retry(
            outbox::RetryPolicy::new()
                .initial_delay(Duration::from_millis(10))
                .jitter(false)
                .max_attempts(2),
        )
        .vacuum_if_autovacuum_off(false)
        .spawn()
        .unwrap();
    let dead = rows as usize / 4;
    eventually("the import published", || {
        published.load(Ordering::SeqCst) >= rows as usize - dead
    })
    .await;
    let start = std::time::Instant::now();
    while outbox.pending_count().await.unwrap() > 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "messages left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await.unwrap();
    assert_eq!(published.load(Ordering::SeqCst), rows as usize - dead);
    let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.dead_letters")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(dead_letters, dead as i64);
    // The relay's backends report their counts when they exit.
    db.pool.close().await;
    let other = db.other_process_pool().await;
    let read = index_entries_read(&other, |read| read("messages_pkey") >= rows as i64).await;
    let read = read("messages_pkey");
    assert!(
        (rows as i64..5 * rows as i64).contains(&read),
        "{read} index entries read to acknowledge {rows} messages"
    );
    other.close().await;
    db.drop().await;
}

/// `stats().parked` counts each due message held back behind a blocked
/// key once, however many blocked positions its key has, and only
/// messages after the key's first one: the count joins each key's first
/// blocked position to the messages, where a plain join on the blocked
/// rows would count a message once per row. One waiting for its retry is
/// not due: it counts as waiting, not as parked.
#[tokio::test]
async fn parked_counts_each_held_back_message_once() {
    let (db, outbox) = setup().await;
    for n in 1..=5 {
        outbox.enqueue(&db.pool, msg("t", "k", n)).await.unwrap();
    }
    outbox
        .enqueue(&db.pool, msg("t", "other", 1))
        .await
        .unwrap();
    let unkeyed = NewMessage::json("t", &serde_json::json!({ "n": 0 })).unwrap();
    outbox.enqueue(&db.pool, unkeyed).await.unwrap();
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM outbox.messages WHERE partition_key = 'k' ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // Blocked at the second and the fourth message: the third, fourth and
    // fifth are held back, the fifth also waiting for a retry; the first,
    // the other key and the unkeyed message are not.
    sqlx::query("INSERT INTO outbox.blocked_keys (partition_key, seq) VALUES ('k', $1), ('k', $2)")
        .bind(seqs[1])
        .bind(seqs[3])
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE outbox.messages SET available_at = now() + interval '1 hour' WHERE seq = $1",
    )
    .bind(seqs[4])
    .execute(&db.pool)
    .await
    .unwrap();
    let s = outbox.stats().await.unwrap();
    assert_eq!(
        (s.pending, s.parked, s.retry_waiting, s.ready),
        (7, 2, 1, 4),
        "{s:?}"
    );
    db.drop().await;
}

/// With a relay pool of its own, the relay needs nothing of the
/// application's pool: it drains everything while the application holds
/// that pool's only connection (a pool exhausted, or a connection left
/// inside a transaction by application code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_pool_of_its_own_keeps_the_relay_off_the_application_pool() {
    let db = TestDb::new().await;
    let app = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(db.options())
        .await
        .unwrap();
    let relay_pool = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(db.options())
        .await
        .unwrap();
    let outbox = PgOutbox::builder(app.clone())
        .relay_pool(relay_pool.clone())
        .build()
        .unwrap();
    outbox.migrate().await.unwrap();
    let batch: Vec<_> = (0..500)
        .map(|i| msg("t", &format!("k{}", i % 7), i))
        .collect();
    outbox.enqueue_batch(&app, batch).await.unwrap();
    // The application's only connection, held inside a transaction.
    let mut held = app.begin().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *held).await.unwrap();
    let publisher = InMemoryPublisher::new();
    let relay = fast_relay(&outbox, publisher.clone())
        .stats_interval(Duration::from_millis(50))
        .spawn()
        .unwrap();
    eventually(
        "500 messages published beside a held application pool",
        || publisher.len() >= 500,
    )
    .await;
    // The relay listens on a connection of its own, not one of the
    // application's.
    support::wait_for("the relay's LISTEN", Duration::from_secs(30), || async {
        listening(&db).await == 1
    })
    .await;
    // A stats pass or two ran meanwhile, on the relay's pool as well.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = relay.health();
    assert_eq!(health.last_error, None, "the relay met an error");
    relay.shutdown().await.unwrap();
    held.rollback().await.unwrap();
    assert_eq!(outbox.pending_count().await.unwrap(), 0);
    relay_pool.close().await;
    app.close().await;
    db.drop().await;
}

/// Backends of this database whose last statement was a `LISTEN`.
async fn listening(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Each relay listens on a connection of its own, with `listen_options`
/// as without: two relays of one outbox in one process both listen (with
/// one connection for the outbox, the second would wait for the first's),
/// and their connections close with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_relay_listens_on_a_connection_of_its_own() {
    let db = TestDb::new().await;
    for direct in [false, true] {
        let mut builder = PgOutbox::builder(db.pool.clone());
        if direct {
            builder = builder.listen_options(db.options());
        }
        let outbox = builder.build().unwrap();
        outbox.migrate().await.unwrap();
        let relays: Vec<_> = (0..2)
            .map(|_| {
                fast_relay(&outbox, InMemoryPublisher::new())
                    .spawn()
                    .unwrap()
            })
            .collect();
        support::wait_for(
            &format!("two LISTEN connections (listen_options: {direct})"),
            Duration::from_secs(30),
            || async { listening(&db).await == 2 },
        )
        .await;
        for relay in relays {
            relay.shutdown().await.unwrap();
        }
        support::wait_for(
            &format!("the LISTEN connections closed (listen_options: {direct})"),
            Duration::from_secs(30),
            || async { listening(&db).await == 0 },
        )
        .await;
    }
    db.drop().await;
}
