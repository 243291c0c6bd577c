//! Per-key order in commit order, many relays with fenced leases, and crash
//! safety, against the real local PostgreSQL (one database per test).

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox::{
    FnPublisher, MessageId, NewMessage, OutboxMessage, PgOutbox, PublishError, Publisher, Relay,
    RelayHandle, RetryPolicy,
};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use support::pg::TestDb;

fn fast_retry() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(100))
        .max_attempts(10_000)
}

/// What a consumer saw, in arrival order.
#[derive(Default)]
struct Received {
    log: Mutex<Vec<MessageId>>,
    /// Messages the destination kept although the publisher reported a
    /// failure: the only ones allowed to arrive twice.
    ambiguous: Mutex<HashSet<MessageId>>,
    /// The per-key number each delivery carried.
    numbers: Mutex<Vec<(MessageId, i64)>>,
}

/// Fails about 5 % of messages before delivering them and about 1 % after
/// (the broker kept the message, the confirmation was lost).
struct ChaosPublisher {
    received: Arc<Received>,
    rng: Mutex<fastrand::Rng>,
}

#[async_trait]
impl Publisher for ChaosPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            let r = self.rng.lock().unwrap().f64();
            if r < 0.05 {
                out.push(Err(PublishError::transient(std::io::Error::other(
                    "broker busy",
                ))));
                continue;
            }
            self.received.log.lock().unwrap().push(m.id());
            self.received.numbers.lock().unwrap().push((
                m.id(),
                m.key_sequence().expect("keyed messages are numbered"),
            ));
            if r < 0.06 {
                self.received.ambiguous.lock().unwrap().insert(m.id());
                out.push(Err(PublishError::transient(std::io::Error::other(
                    "confirmation lost",
                ))));
            } else {
                out.push(Ok(()));
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_many_relays_random_failures_keep_commit_order() {
    let db = TestDb::with_options(PgPoolOptions::new().max_connections(40)).await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE key_counters (key text PRIMARY KEY, n bigint NOT NULL);
         CREATE TABLE key_log (key text NOT NULL, n bigint NOT NULL, msg uuid NOT NULL,
                               PRIMARY KEY (key, n));
         INSERT INTO key_counters SELECT 'key-' || g, 0 FROM generate_series(0, 299) g;",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let received = Arc::new(Received::default());
    let relays: Vec<RelayHandle> = (0..4)
        .map(|i| {
            Relay::builder(
                outbox.clone(),
                ChaosPublisher {
                    received: received.clone(),
                    rng: Mutex::new(fastrand::Rng::with_seed(i)),
                },
            )
            .batch_size(50)
            .poll_interval(Duration::from_millis(20))
            .lease_ttl(Duration::from_secs(2))
            .key_sequences(true)
            .retry(fast_retry())
            .spawn()
            .unwrap()
        })
        .collect();

    // 16 writers on their own connections. Each transaction writes one to
    // three keys; half of them enqueue before touching the key's counter
    // row, so the counter's lock alone does not order them; one in ten
    // rolls back.
    let mut writers = Vec::new();
    for w in 0..16u64 {
        let pool = db.pool.clone();
        let outbox = outbox.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(1000 + w);
            let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
            let mut deadlocks = 0u32;
            let mut conn = pool.acquire().await.unwrap();
            for _ in 0..150 {
                let mut keys: Vec<String> = (0..rng.usize(1..=3))
                    .map(|_| format!("key-{}", rng.usize(0..300)))
                    .collect();
                keys.sort();
                keys.dedup();
                let enqueue_first = rng.bool();
                let rollback = rng.u8(0..10) == 0;
                let mut ids = Vec::new();
                let outcome: Result<bool, outbox::Error> = async {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    for k in &keys {
                        let m = NewMessage::json("t", &serde_json::json!({ "key": k }))?
                            .with_partition_key(k.clone());
                        ids.push((k.clone(), m.id()));
                        if !enqueue_first {
                            // Touch the key's row first, enqueue after.
                            sqlx::query("SELECT n FROM key_counters WHERE key = $1 FOR UPDATE")
                                .bind(k)
                                .execute(&mut *tx)
                                .await?;
                        }
                        outbox.enqueue(&mut *tx, m).await?;
                    }
                    for (k, id) in &ids {
                        sqlx::query(
                            "WITH c AS (UPDATE key_counters SET n = n + 1 WHERE key = $1 \
                             RETURNING n) INSERT INTO key_log SELECT $1, n, $2 FROM c",
                        )
                        .bind(k)
                        .bind(id.as_uuid())
                        .execute(&mut *tx)
                        .await?;
                    }
                    if rollback {
                        tx.rollback().await?;
                        Ok(false)
                    } else {
                        outbox.commit(tx).await?;
                        Ok(true)
                    }
                }
                .await;
                let ids = ids.into_iter().map(|(_, id)| id);
                match outcome {
                    Ok(true) => committed.extend(ids),
                    Ok(false) => rolled_back.extend(ids),
                    // The two code paths take the key's row lock and the
                    // outbox's key lock in opposite orders, so PostgreSQL
                    // breaks the odd deadlock by aborting one transaction,
                    // which then counts as rolled back.
                    Err(e) if is_deadlock(&e) => {
                        deadlocks += 1;
                        rolled_back.extend(ids)
                    }
                    Err(e) => panic!("writer failed: {e:?}"),
                }
            }
            let _ = deadlocks;
            (committed, rolled_back)
        }));
    }
    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    for w in writers {
        let (c, r) = w.await.unwrap();
        committed.extend(c);
        rolled_back.extend(r);
    }
    assert!(committed.len() > 3000, "{}", committed.len());
    assert!(!rolled_back.is_empty());

    let start = Instant::now();
    loop {
        let seen: HashSet<MessageId> = received.log.lock().unwrap().iter().copied().collect();
        if committed.iter().all(|id| seen.contains(id)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not every committed message arrived: {} of {}",
            committed.iter().filter(|id| seen.contains(id)).count(),
            committed.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Messages delivered but not acknowledged (a failure reported after
    // delivery, a killed relay) are published again, then acknowledged.
    support::wait_for("the outbox drained", Duration::from_secs(120), || async {
        outbox.pending_count().await.unwrap() == 0
    })
    .await;
    for r in relays {
        r.shutdown().await.unwrap();
    }

    let log = received.log.lock().unwrap().clone();
    let ambiguous = received.ambiguous.lock().unwrap().clone();
    // Nothing from a rolled-back transaction; nothing unknown.
    for id in &log {
        assert!(!rolled_back.contains(id), "{id} was rolled back");
        assert!(committed.contains(id), "{id} was never committed");
    }
    // Duplicates only where the destination kept a message the publisher
    // reported as failed.
    let mut count: HashMap<MessageId, usize> = HashMap::new();
    for id in &log {
        *count.entry(*id).or_default() += 1;
    }
    let dups: Vec<_> = count
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, _)| *id)
        .collect();
    for id in &dups {
        assert!(ambiguous.contains(id), "{id} duplicated without a failure");
    }
    // Per key, first deliveries follow commit order (the counter's order).
    let commit_order: Vec<(String, i64, uuid::Uuid)> =
        sqlx::query_as("SELECT key, n, msg FROM key_log ORDER BY key, n")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let mut first_delivery: HashMap<MessageId, usize> = HashMap::new();
    for (i, id) in log.iter().enumerate() {
        first_delivery.entry(*id).or_insert(i);
    }
    let mut violations = 0;
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (key, _n, msg) in &commit_order {
        let at = first_delivery[&MessageId::from_uuid(*msg)];
        if let Some(prev) = last.insert(key, at) {
            if prev > at {
                violations += 1;
            }
        }
    }
    // Per key, the numbers of first deliveries are 1, 2, 3, ... and a
    // redelivery carries its original number.
    let numbers = received.numbers.lock().unwrap().clone();
    let mut number_of: HashMap<MessageId, i64> = HashMap::new();
    for (id, n) in &numbers {
        let first = *number_of.entry(*id).or_insert(*n);
        assert_eq!(first, *n, "{id} redelivered with another number");
    }
    let mut per_key: HashMap<&str, Vec<i64>> = HashMap::new();
    for (key, _n, msg) in &commit_order {
        per_key
            .entry(key)
            .or_default()
            .push(number_of[&MessageId::from_uuid(*msg)]);
    }
    for (key, got) in per_key {
        let want: Vec<i64> = (1..=got.len() as i64).collect();
        assert_eq!(got, want, "key {key}: numbers follow commit order, no gap");
    }
    eprintln!(
        "{} committed, {} rolled back, {} deliveries, {} duplicates ({} ambiguous failures), {} order violations",
        committed.len(),
        rolled_back.len(),
        log.len(),
        dups.len(),
        ambiguous.len(),
        violations
    );
    assert_eq!(violations, 0);
    assert_eq!(outbox.pending_count().await.unwrap(), 0);
    db.drop().await;
}

/// A backlog drained in full batches: each relay claims the next batch while
/// it publishes the current one, and a failure in the current batch must
/// hold back the key's later messages that the early claim already holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_batches_hold_back_keys_with_a_failed_message() {
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    // 40 keys, 75 messages each, interleaved, committed in this order.
    let mut order: HashMap<String, Vec<MessageId>> = HashMap::new();
    let mut messages = Vec::new();
    for i in 0..3000u64 {
        let key = format!("key-{}", i % 40);
        let m = NewMessage::json("t", &serde_json::json!({ "i": i }))
            .unwrap()
            .with_partition_key(key.clone());
        order.entry(key).or_default().push(m.id());
        messages.push(m);
    }
    for chunk in messages.chunks(500) {
        let mut tx = db.pool.begin().await.unwrap();
        outbox
            .enqueue_batch(&mut *tx, chunk.to_vec())
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    let received = Arc::new(Received::default());
    let relays: Vec<RelayHandle> = (0..2)
        .map(|i| {
            Relay::builder(
                outbox.clone(),
                ChaosPublisher {
                    received: received.clone(),
                    rng: Mutex::new(fastrand::Rng::with_seed(77 + i)),
                },
            )
            .batch_size(60)
            .poll_interval(Duration::from_millis(20))
            .key_sequences(true)
            .retry(fast_retry())
            .spawn()
            .unwrap()
        })
        .collect();
    support::wait_for("the outbox drained", Duration::from_secs(120), || async {
        outbox.pending_count().await.unwrap() == 0
    })
    .await;
    for r in relays {
        r.shutdown().await.unwrap();
    }

    let log = received.log.lock().unwrap().clone();
    let ambiguous = received.ambiguous.lock().unwrap().clone();
    let mut first: HashMap<MessageId, usize> = HashMap::new();
    for (i, id) in log.iter().enumerate() {
        if first.insert(*id, i).is_some() {
            assert!(ambiguous.contains(id), "{id} duplicated without a failure");
        }
    }
    let mut violations = 0;
    for (key, ids) in &order {
        let at: Vec<usize> = ids
            .iter()
            .map(|id| {
                *first
                    .get(id)
                    .unwrap_or_else(|| panic!("{id} of {key} lost"))
            })
            .collect();
        violations += at.windows(2).filter(|w| w[0] > w[1]).count();
    }
    assert_eq!(first.len(), 3000);
    assert_eq!(violations, 0, "first deliveries out of key order");
    db.drop().await;
}

fn is_deadlock(e: &outbox::Error) -> bool {
    match e {
        outbox::Error::Database(sqlx::Error::Database(d)) => d.code().as_deref() == Some("40P01"),
        _ => false,
    }
}

/// Entry point of the relay process used by the crash test: does nothing
/// unless started by that test with `OUTBOX_CRASH_CHILD_URL` set.
#[test]
fn crash_child_relay() {
    let Ok(url) = std::env::var("OUTBOX_CRASH_CHILD_URL") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Warnings (fencing, lost leases) go to stderr for the parent to read.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("outbox=warn")
        .try_init();
    let delay = std::env::var("OUTBOX_CRASH_CHILD_DELAY_MS")
        .ok()
        .and_then(|d| d.parse().ok())
        .map(Duration::from_millis);
    rt.block_on(async move {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        let outbox = PgOutbox::new(pool.clone());
        let mut relay = crash_relay(&outbox, pool, std::process::id() as i32);
        if let Some(d) = delay {
            relay = relay_with_delay(&outbox, d);
        }
        let _relay = relay.spawn().unwrap();
        // Runs until killed.
        std::future::pending::<()>().await;
    });
}

/// A relay whose publisher records deliveries in the database, so they
/// survive the publishing process being killed.
fn crash_relay(outbox: &PgOutbox, pool: PgPool, relay: i32) -> outbox::RelayBuilder {
    let publisher = FnPublisherBatch {
        pool,
        relay,
        confirm_after: Duration::ZERO,
    };
    Relay::builder(outbox.clone(), publisher)
        .batch_size(200)
        .poll_interval(Duration::from_millis(50))
        .lease_ttl(Duration::from_secs(1))
        .key_sequences(true)
        .retry(fast_retry())
}

struct FnPublisherBatch {
    pool: PgPool,
    relay: i32,
    /// Time spent after delivering, before confirming: the window in which
    /// the stall test freezes the process.
    confirm_after: Duration,
}

fn relay_with_delay(outbox: &PgOutbox, confirm_after: Duration) -> outbox::RelayBuilder {
    let publisher = FnPublisherBatch {
        pool: outbox.pool().clone(),
        relay: std::process::id() as i32,
        confirm_after,
    };
    Relay::builder(outbox.clone(), publisher)
        .batch_size(1)
        .poll_interval(Duration::from_millis(20))
        .lease_ttl(Duration::from_secs(1))
        .key_sequences(true)
        .retry(fast_retry())
}

#[async_trait]
impl Publisher for FnPublisherBatch {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let ids: Vec<uuid::Uuid> = batch.iter().map(|m| m.id().as_uuid()).collect();
        let keys: Vec<String> = batch
            .iter()
            .map(|m| m.partition_key().unwrap_or("").to_owned())
            .collect();
        let ns: Vec<i64> = batch
            .iter()
            .map(|m| {
                m.payload_json::<serde_json::Value>().unwrap()["n"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        let numbers: Vec<i64> = batch.iter().map(|m| m.key_sequence().unwrap()).collect();
        let r = sqlx::query(
            "INSERT INTO received (id, key, n, ks, relay) \
             SELECT i, k, n, ks, $5 FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[]) \
             AS u(i, k, n, ks)",
        )
        .bind(ids)
        .bind(keys)
        .bind(ns)
        .bind(numbers)
        .bind(self.relay)
        .execute(&self.pool)
        .await;
        if !self.confirm_after.is_zero() {
            tokio::time::sleep(self.confirm_after).await;
        }
        match r {
            Ok(_) => batch.iter().map(|_| Ok(())).collect(),
            Err(e) => {
                let e = Arc::new(e);
                batch
                    .iter()
                    .map(|_| Err(PublishError::transient(e.to_string())))
                    .collect()
            }
        }
    }
}

fn spawn_child(url: &str) -> Child {
    child_command(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start relay process")
}

fn child_command(url: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "crash_child_relay",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("OUTBOX_CRASH_CHILD_URL", url);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_processes_killed_at_random_lose_nothing_and_keep_order() {
    const KEYS: i64 = 500;
    const TXS: i64 = 500;
    const PER_TX: i64 = 100;
    let total = TXS * PER_TX;
    let db = TestDb::with_options(PgPoolOptions::new().max_connections(30)).await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    sqlx::query(
        "CREATE TABLE received (seq bigserial PRIMARY KEY, id uuid NOT NULL, key text NOT NULL, \
         n bigint NOT NULL, ks bigint NOT NULL, relay int NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    // Two relays that are never killed.
    let steady: Vec<RelayHandle> = (0..2)
        .map(|_| crash_relay(&outbox, db.pool.clone(), 0).spawn().unwrap())
        .collect();

    // 10 writers; writer w owns the keys k with k % 10 == w, so each key's
    // commit order is its writer's order, carried in the payload as n.
    let mut writers = Vec::new();
    for w in 0..10i64 {
        let pool = db.pool.clone();
        let outbox = outbox.clone();
        writers.push(tokio::spawn(async move {
            let mut next: HashMap<i64, i64> = HashMap::new();
            let mut rng = fastrand::Rng::with_seed(w as u64);
            for _ in 0..TXS / 10 {
                let batch: Vec<NewMessage> = (0..PER_TX)
                    .map(|_| {
                        let k = rng.i64(0..KEYS / 10) * 10 + w;
                        let n = next.entry(k).or_insert(0);
                        *n += 1;
                        NewMessage::json("t", &serde_json::json!({ "n": *n }))
                            .unwrap()
                            .with_partition_key(format!("key-{k}"))
                    })
                    .collect();
                let mut tx = pool.begin().await.unwrap();
                outbox.enqueue_batch(&mut *tx, batch).await.unwrap();
                outbox.commit(tx).await.unwrap();
                tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
            }
        }));
    }

    // Kill a relay process at random moments, at least 10 times, while the
    // writers write and the steady relays keep going.
    let url = db.url();
    let mut kills = 0;
    let mut rng = fastrand::Rng::with_seed(42);
    let start = Instant::now();
    loop {
        let mut child = spawn_child(&url);
        tokio::time::sleep(Duration::from_millis(rng.u64(200..1200))).await;
        child.kill().expect("SIGKILL the relay process");
        child.wait().unwrap();
        kills += 1;
        let delivered: i64 = sqlx::query_scalar("SELECT count(DISTINCT id) FROM received")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if kills >= 10 && delivered >= total {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "only {delivered} of {total} delivered after {kills} kills"
        );
    }
    for w in writers {
        w.await.unwrap();
    }
    loop {
        let delivered: i64 = sqlx::query_scalar("SELECT count(DISTINCT id) FROM received")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if delivered >= total {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(400),
            "lost messages: {delivered} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Messages delivered but not acknowledged (a failure reported after
    // delivery, a killed relay) are published again, then acknowledged.
    support::wait_for("the outbox drained", Duration::from_secs(120), || async {
        outbox.pending_count().await.unwrap() == 0
    })
    .await;
    for r in steady {
        r.shutdown().await.unwrap();
    }

    let rows: Vec<(uuid::Uuid, String, i64, i64, i32)> =
        sqlx::query_as("SELECT id, key, n, ks, relay FROM received ORDER BY seq")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let mut seen = HashSet::new();
    let mut last_first: HashMap<String, i64> = HashMap::new();
    let mut violations = 0;
    let mut by_children = 0;
    let mut number_of: HashMap<uuid::Uuid, i64> = HashMap::new();
    for (id, key, n, ks, relay) in &rows {
        if *relay != 0 {
            by_children += 1;
        }
        // The writer's own count per key is its commit order; the relay's
        // per-key number must match it, also on redelivery after a kill.
        assert_eq!(ks, n, "key {key}: per-key number {ks} for the {n}th commit");
        assert_eq!(*number_of.entry(*id).or_insert(*ks), *ks);
        if seen.insert(*id) {
            let prev = last_first.insert(key.clone(), *n);
            if prev.is_some_and(|p| p >= *n) {
                violations += 1;
            }
        }
    }
    let duplicates = rows.len() - seen.len();
    eprintln!(
        "{total} messages, {kills} relay processes killed, {} deliveries ({by_children} by killed processes), {duplicates} duplicates, {violations} order violations",
        rows.len()
    );
    assert_eq!(seen.len() as i64, total, "no loss");
    assert_eq!(violations, 0, "per-key order");
    assert!(by_children > 0, "the killed relays took part");
    assert_eq!(outbox.pending_count().await.unwrap(), 0);
    db.drop().await;
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_relay_is_fenced_and_publishes_nothing_after_it_thaws() {
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    sqlx::query(
        "CREATE TABLE received (seq bigserial PRIMARY KEY, id uuid NOT NULL, key text NOT NULL, \
         n bigint NOT NULL, ks bigint NOT NULL, relay int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    // Relay C, a separate process, delivers one message at a time and
    // takes 400 ms to confirm each.
    let mut child = child_command(&db.url())
        .env("OUTBOX_CRASH_CHILD_DELAY_MS", "400")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start relay process");
    let pid = child.id() as i32;
    let start = Instant::now();
    loop {
        let owned: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox.leases WHERE owner IS NOT NULL AND expires_at > now()",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if owned == 64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "relay process never leased"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let batch: Vec<_> = (1..=5)
        .map(|n| {
            NewMessage::json("t", &serde_json::json!({ "n": n }))
                .unwrap()
                .with_partition_key("candidate-1")
        })
        .collect();
    outbox.enqueue_batch(&db.pool, batch).await.unwrap();

    // Freeze C right after it delivered its first message, before it
    // confirms (a GC pause, a frozen VM).
    loop {
        let by_c: i64 = sqlx::query_scalar("SELECT count(*) FROM received WHERE relay = $1")
            .bind(pid)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if by_c > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "relay process never published"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    signal(&child, "-STOP");
    let frozen_with: i64 = sqlx::query_scalar("SELECT count(*) FROM received WHERE relay = $1")
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .unwrap();

    // Relay B takes over once C's leases expire and publishes everything.
    let b = crash_relay(&outbox, db.pool.clone(), 0).spawn().unwrap();
    loop {
        let by_b: i64 =
            sqlx::query_scalar("SELECT count(DISTINCT id) FROM received WHERE relay = 0")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if by_b == 5 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "B did not take over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // C thaws: its confirmation arrives late, its acknowledgement must be
    // refused, and it must publish nothing more.
    signal(&child, "-CONT");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM received WHERE relay = $1")
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    b.shutdown().await.unwrap();

    assert_eq!(
        after, frozen_with,
        "the thawed relay published nothing more"
    );
    assert!(
        stderr.contains("acknowledgements refused"),
        "the thawed relay's acknowledgement was refused by fencing; its log:\n{stderr}"
    );
    // B published every message, in order, numbered 1..5.
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT n, ks FROM received WHERE relay = 0 ORDER BY seq")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows, (1..=5).map(|n| (n, n)).collect::<Vec<_>>());
    assert_eq!(outbox.pending_count().await.unwrap(), 0);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_publisher_keeps_its_leases() {
    // A publish call that takes longer than the lease: the relay renews
    // while it waits, so no other relay takes the keys and nothing is
    // published twice.
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    let log: Arc<Mutex<Vec<MessageId>>> = Arc::default();
    let slow = |log: Arc<Mutex<Vec<MessageId>>>, pause: Duration| {
        FnPublisher::new(move |m: OutboxMessage| {
            let log = log.clone();
            async move {
                tokio::time::sleep(pause).await;
                log.lock().unwrap().push(m.id());
                Ok(())
            }
        })
    };
    let ttl = Duration::from_millis(600);
    let a = Relay::builder(outbox.clone(), slow(log.clone(), ttl * 3))
        .lease_ttl(ttl)
        .poll_interval(Duration::from_millis(10))
        .spawn()
        .unwrap();
    support::eventually("A holds every bucket", || a.health().leased_buckets == 64).await;
    let b = Relay::builder(outbox.clone(), slow(log.clone(), Duration::ZERO))
        .lease_ttl(ttl)
        .poll_interval(Duration::from_millis(10))
        .spawn()
        .unwrap();
    let ids: Vec<MessageId> = {
        let batch: Vec<_> = (0..3)
            .map(|i| NewMessage::json("t", &i).unwrap().with_partition_key("k"))
            .collect();
        let ids = batch.iter().map(|m| m.id()).collect();
        outbox.enqueue_batch(&db.pool, batch).await.unwrap();
        outbox.wake();
        ids
    };
    support::eventually("all published", || log.lock().unwrap().len() >= 3).await;
    tokio::time::sleep(ttl).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert_eq!(*log.lock().unwrap(), ids, "once each, in order");
    assert_eq!(outbox.pending_count().await.unwrap(), 0);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_rebalance_when_relays_join_and_leave() {
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    let relay = |outbox: &PgOutbox| {
        Relay::builder(outbox.clone(), outbox::InMemoryPublisher::new())
            .lease_ttl(Duration::from_millis(600))
            .poll_interval(Duration::from_millis(20))
            .spawn()
            .unwrap()
    };
    let a = relay(&outbox);
    support::eventually("A alone takes every bucket", || {
        a.health().leased_buckets == 64
    })
    .await;
    let b = relay(&outbox);
    let c = relay(&outbox);
    support::eventually("three relays share 64 buckets fairly", || {
        let (x, y, z) = (
            a.health().leased_buckets,
            b.health().leased_buckets,
            c.health().leased_buckets,
        );
        x + y + z == 64 && [x, y, z].iter().all(|n| (20..=22).contains(n))
    })
    .await;
    // A clean shutdown hands its buckets over at once; a crash (dropping
    // the runtime's task without releasing) after the lease expires.
    b.shutdown().await.unwrap();
    support::eventually("two relays share the leaver's buckets", || {
        let (x, z) = (a.health().leased_buckets, c.health().leased_buckets);
        x == 32 && z == 32
    })
    .await;
    let owners: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT owner) FROM outbox.leases WHERE expires_at > now()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(owners, 2);
    a.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
    db.drop().await;
}
