//! The claims' low-water mark on PostgreSQL (migration 8): it rises past
//! what was published while a read-only transaction holds back vacuum,
//! and never past a message that can still be claimed: one whose
//! transaction had not committed when the mark was taken, one woken from
//! its retry's sleep, one unparked behind its key, one replayed from the
//! dead letters.
//!
//! Each test gets its own database, created from `OUTBOX_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped at the end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outbox::{
    FnPublisher, InMemoryPublisher, NewMessage, OutboxMessage, PgOutbox, PublishError, Relay,
    RetryPolicy,
};

mod support;

use support::eventually;
use support::pg::TestDb;

async fn setup() -> (TestDb, PgOutbox) {
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.expect("migrate");
    (db, outbox)
}

fn msg(key: &str, n: u64) -> NewMessage {
    NewMessage::json("t", &serde_json::json!({ "key": key, "n": n }))
        .unwrap()
        .with_partition_key(key)
}

async fn floor(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT seq FROM outbox.ready_floor")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn enqueue(outbox: &PgOutbox, db: &TestDb, key: &str, n: u64) {
    let mut tx = db.pool.begin().await.unwrap();
    outbox.enqueue(&mut *tx, msg(key, n)).await.unwrap();
    outbox.commit(tx).await.unwrap();
}

/// Waits until the mark has risen above `above`: it moves a pass or two
/// (about a second each) after what it may pass was published.
async fn floor_rises_above(db: &TestDb, above: i64) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let f = floor(db).await;
        if f > above {
            return f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the low-water mark stayed at {f}, not above {above}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Watches the mark's invariant from another connection until dropped: no
/// message in the claims' path lies below it, in any snapshot. A message
/// below it would wait for the upkeep's periodic look below the mark,
/// which hides such a hole from a test that only waits for publication.
struct FloorWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Option<String>>,
}

impl FloorWatch {
    fn start(db: &TestDb) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pool = db.pool.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let below: Option<(i64, i64)> = sqlx::query_as(
                        "SELECT m.seq, f.seq FROM outbox.messages m, outbox.ready_floor f \
                         WHERE NOT m.parked AND NOT m.sleeping AND m.seq < f.seq LIMIT 1",
                    )
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
                    if let Some((seq, floor)) = below {
                        return Some(format!("message {seq} ready below the mark {floor}"));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                None
            }
        });
        Self { stop, task }
    }

    /// Stops watching; panics with the first violation seen.
    async fn check(self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(violation) = self.task.await.unwrap() {
            panic!("{violation}");
        }
    }
}

/// The positions of `key`'s pending messages.
async fn positions(db: &TestDb, key: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM outbox.messages WHERE partition_key = $1 ORDER BY seq")
        .bind(key)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// Published messages leave the mark behind them, while a read-only
/// `REPEATABLE READ` transaction is open all along; and a message whose
/// transaction drew its position before a mark and commits after it is
/// still published, while the mark waits for that transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mark_rises_under_a_pinned_horizon_and_waits_for_open_writers() {
    let (db, outbox) = setup().await;
    let watch = FloorWatch::start(&db);
    let mut pin = db.pool.begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *pin)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM outbox.messages")
        .execute(&mut *pin)
        .await
        .unwrap();

    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(outbox.clone(), publisher.clone())
        .poll_interval(Duration::from_millis(20))
        .spawn()
        .unwrap();
    for n in 0..20 {
        enqueue(&outbox, &db, "a", n).await;
    }
    eventually("20 published", || publisher.len() == 20).await;
    let mark = floor_rises_above(&db, 0).await;
    // Only deleted rows below it; up to one past the last position.
    let last = last_position(&db).await;
    assert!(mark <= last + 1, "{mark} > {last} + 1");

    // A writer draws its position and stays open across several passes.
    let mut open = db.pool.begin().await.unwrap();
    outbox.enqueue(&mut *open, msg("late", 0)).await.unwrap();
    for n in 20..40 {
        enqueue(&outbox, &db, "a", n).await;
    }
    eventually("40 published", || publisher.len() == 40).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    open.commit().await.unwrap();
    eventually("the late writer's message published", || {
        publisher
            .messages()
            .iter()
            .any(|m| m.partition_key() == Some("late"))
    })
    .await;
    // And once it is, the mark passes it.
    floor_rises_above(&db, mark).await;
    pin.commit().await.unwrap();
    relay.shutdown().await.unwrap();
    watch.check().await;
    db.drop().await;
}

/// A writer that drew its position and stays open while nothing else
/// commits (a quiet outbox: no transaction ends after it took its id)
/// keeps the mark at or below its position until it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_open_writer_holds_the_mark_down() {
    let (db, outbox) = setup().await;
    let watch = FloorWatch::start(&db);
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(outbox.clone(), publisher.clone())
        .poll_interval(Duration::from_millis(20))
        .spawn()
        .unwrap();
    for n in 0..5 {
        enqueue(&outbox, &db, "a", n).await;
    }
    eventually("5 published", || publisher.len() == 5).await;
    floor_rises_above(&db, last_position(&db).await).await;
    for round in 0..3 {
        let mut open = db.pool.begin().await.unwrap();
        outbox
            .enqueue(&mut *open, msg("lone", round))
            .await
            .unwrap();
        let mine: i64 = sqlx::query_scalar(
            "SELECT seq FROM outbox.messages WHERE partition_key = 'lone' ORDER BY seq DESC LIMIT 1",
        )
        .fetch_one(&mut *open)
        .await
        .unwrap();
        // Several upkeep passes while it is open.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let f = floor(&db).await;
        assert!(f <= mine, "the mark rose to {f} past open position {mine}");
        open.commit().await.unwrap();
        eventually("the lone writer's message published", || {
            publisher.len() == 6 + round as usize
        })
        .await;
    }
    relay.shutdown().await.unwrap();
    watch.check().await;
    db.drop().await;
}

/// The last position the messages' sequence handed out.
async fn last_position(db: &TestDb) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('outbox.messages', 'seq'))",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Messages that leave the claims' path and come back below a risen mark
/// are published: one woken from its retry's sleep, a dead letter
/// replayed at its position, and the messages of its key parked behind it
/// and unparked when it goes through, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_back_below_the_mark_are_published() {
    let (db, outbox) = setup().await;
    let watch = FloorWatch::start(&db);
    let sleepy_calls = Arc::new(AtomicUsize::new(0));
    let dead_calls = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let publisher = FnPublisher::new({
        let (sleepy_calls, dead_calls, delivered) =
            (sleepy_calls.clone(), dead_calls.clone(), delivered.clone());
        move |m: OutboxMessage| {
            let (sleepy_calls, dead_calls, delivered) =
                (sleepy_calls.clone(), dead_calls.clone(), delivered.clone());
            async move {
                let key = m.partition_key().unwrap_or_default().to_owned();
                let body: serde_json::Value = serde_json::from_slice(m.payload()).unwrap();
                let n = body["n"].as_u64().unwrap();
                // Its first attempt sleeps until a retry 10 s later.
                if key == "sleepy" && sleepy_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(
                        PublishError::transient("later").with_retry_after(Duration::from_secs(10))
                    );
                }
                // Dead-lettered at once; its key's later messages wait.
                if key == "dead" && n == 0 && dead_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(PublishError::permanent("refused"));
                }
                if key == "lifted" && n == 0 {
                    return Err(PublishError::permanent("refused for good"));
                }
                delivered.lock().unwrap().push((key, n));
                Ok(())
            }
        }
    });
    let relay = Relay::builder(outbox.clone(), publisher)
        .poll_interval(Duration::from_millis(20))
        .retry(RetryPolicy::new().initial_delay(Duration::from_millis(10)))
        .spawn()
        .unwrap();
    enqueue(&outbox, &db, "sleepy", 0).await;
    let sleepy = positions(&db, "sleepy").await[0];
    for n in 0..4 {
        enqueue(&outbox, &db, "dead", n).await;
    }
    let dead = *positions(&db, "dead").await.last().unwrap();
    for n in 0..3 {
        enqueue(&outbox, &db, "lifted", n).await;
    }
    let lifted = *positions(&db, "lifted").await.last().unwrap();
    for n in 0..20 {
        enqueue(&outbox, &db, "a", n).await;
    }
    // The sleeper sleeps, the dead letter's key is parked, the rest goes:
    // the mark passes them all.
    floor_rises_above(&db, dead.max(sleepy).max(lifted)).await;
    let seen = |key: &str| {
        delivered
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
    };
    assert!(seen("dead").is_empty(), "{:?}", seen("dead"));
    // The mark may stop at the first of them while the rest still go out.
    eventually("the 20 of key a published", || seen("a").len() == 20).await;

    // Woken below the mark, the sleeper goes.
    eventually("the sleeper published", || seen("sleepy") == vec![0]).await;
    // Replayed below the mark (risen again once the sleeper went), the
    // dead letter goes, and its key after it.
    floor_rises_above(&db, dead.max(sleepy).max(lifted)).await;
    let replay = outbox::DeadLetterFilter::new().partition_key("dead");
    assert_eq!(
        outbox.replay_dead_letters(&replay).await.unwrap().replayed,
        1
    );
    eventually("the dead letter's key published in order", || {
        seen("dead") == vec![0, 1, 2, 3]
    })
    .await;
    // Discarded by an operator, the other dead letter frees its key: the
    // upkeep unparks the rest below the mark, and they go.
    floor_rises_above(&db, lifted).await;
    let head: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM outbox.dead_letters WHERE partition_key = 'lifted'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(head.len(), 1);
    outbox
        .discard_dead_letter(outbox::MessageId::from_uuid(head[0]))
        .await
        .unwrap();
    eventually("the freed key's rest published in order", || {
        seen("lifted") == vec![1, 2]
    })
    .await;
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.pending_count().await.unwrap(), 0);
    watch.check().await;
    db.drop().await;
}

/// A message put back in the claims' path below the mark by a statement
/// that does not lower it (a relay built before migration 8, still running
/// beside newer ones, or an UPDATE by hand) is found by the upkeep's
/// periodic look below the mark, and published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_put_back_without_lowering_the_mark_is_found() {
    let (db, outbox) = setup().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(
        outbox.clone(),
        FnPublisher::new({
            let (calls, publisher) = (calls.clone(), publisher.clone());
            move |m: OutboxMessage| {
                let (calls, publisher) = (calls.clone(), publisher.clone());
                async move {
                    // The stray's first attempt sleeps for an hour.
                    if m.partition_key() == Some("stray")
                        && calls.fetch_add(1, Ordering::SeqCst) == 0
                    {
                        return Err(PublishError::transient("later")
                            .with_retry_after(Duration::from_secs(3600)));
                    }
                    outbox::Publisher::publish(&publisher, std::slice::from_ref(&m))
                        .await
                        .remove(0)
                }
            }
        }),
    )
    .poll_interval(Duration::from_millis(20))
    .spawn()
    .unwrap();
    enqueue(&outbox, &db, "stray", 0).await;
    let stray = positions(&db, "stray").await[0];
    for n in 0..20 {
        enqueue(&outbox, &db, "a", n).await;
    }
    eventually("20 published", || publisher.len() == 20).await;
    floor_rises_above(&db, stray).await;
    // Woken by hand, without lowering the mark.
    let woken = sqlx::query(
        "UPDATE outbox.messages SET sleeping = false, available_at = NULL WHERE seq = $1",
    )
    .bind(stray)
    .execute(&db.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(woken, 1, "the stray was not pending");
    eventually("the stray published", || {
        publisher
            .messages()
            .iter()
            .any(|m| m.partition_key() == Some("stray"))
    })
    .await;
    relay.shutdown().await.unwrap();
    db.drop().await;
}

/// A relay whose role may read and write the outbox's tables but not read
/// its sequence (producers alone draw positions) cannot take a mark, and
/// its upkeep must still wake a retry from its sleep: the upkeep's first
/// look reads the sequence only where the role may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_may_not_read_the_sequence_still_wakes_retries() {
    let (db, outbox) = setup().await;
    let role = format!("outbox_relay_{}", uuid::Uuid::now_v7().simple());
    for grant in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT USAGE ON SCHEMA outbox TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA outbox TO {role}"),
    ] {
        sqlx::query(&grant).execute(&db.pool).await.unwrap();
    }
    let relay_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .connect_with(db.options().username(&role))
        .await
        .unwrap();
    let may_read: bool = sqlx::query_scalar(
        "SELECT has_sequence_privilege(pg_get_serial_sequence('outbox.messages', 'seq'), 'SELECT')",
    )
    .fetch_one(&relay_pool)
    .await
    .unwrap();
    assert!(
        !may_read,
        "the role may read the sequence: nothing is tested"
    );

    let calls = Arc::new(AtomicUsize::new(0));
    let publisher = Arc::new(InMemoryPublisher::new());
    let relay = Relay::builder(
        PgOutbox::new(relay_pool.clone()),
        FnPublisher::new({
            let (calls, publisher) = (calls.clone(), publisher.clone());
            move |m: OutboxMessage| {
                let (calls, publisher) = (calls.clone(), publisher.clone());
                async move {
                    // Put to sleep by its first attempt: only the upkeep
                    // wakes it.
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        return Err(PublishError::transient("later")
                            .with_retry_after(Duration::from_secs(4)));
                    }
                    outbox::Publisher::publish(&*publisher, std::slice::from_ref(&m))
                        .await
                        .remove(0)
                }
            }
        }),
    )
    .poll_interval(Duration::from_millis(20))
    .spawn()
    .unwrap();
    enqueue(&outbox, &db, "sleepy", 0).await;
    eventually("the retry woken and published", || publisher.len() == 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    relay.shutdown().await.unwrap();
    relay_pool.close().await;
    db.drop().await;
    let admin: sqlx::postgres::PgConnectOptions = support::pg::admin_url().parse().unwrap();
    let mut conn = sqlx::ConnectOptions::connect(&admin).await.unwrap();
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&mut conn)
        .await
        .unwrap();
}
