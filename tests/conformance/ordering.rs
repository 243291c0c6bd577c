//! Per-key order in commit order, many relays with fenced leases, and crash
//! safety: many writers and chaotic relays, prefetched batches behind a
//! failure, relay processes killed or frozen, slow publishers, leases that
//! move between relays.
//!
//! These run at CI scale. Environment:
//! - `OUTBOX_ORDERING_SCALE` (default 1): multiplies the transactions of
//!   the two load scenarios (many writers, killed relay processes), and
//!   their time limits, for longer runs, e.g. `OUTBOX_ORDERING_SCALE=10`.
//! - `OUTBOX_TEST_PG`: the PostgreSQL server (see `tests/support/pg.rs`).
//! - `OUTBOX_CRASH_CHILD_BACKEND`, `OUTBOX_CRASH_CHILD_DB` and
//!   `OUTBOX_CRASH_CHILD_DELAY_MS` are set by the scenarios for the relay
//!   processes they start (the `crash_child_relay` entry of `main.rs`), not
//!   by hand.
//!
//! On SQLite the key space is one bucket: one relay publishes and the
//! others stand by, so these scenarios check there that the bucket changes
//! hands safely (after a crash, a freeze, a shutdown) rather than that
//! buckets are shared.

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox::{
    FnPublisher, InMemoryPublisher, MessageId, NewMessage, OutboxMessage, PublishError, Publisher,
    RelayBuilder, RelayHandle, RetryPolicy,
};

use crate::backend::{every_bucket_held, Backend, Delivery, Pool, TestOutbox};
use crate::chaos::{chaos_relay, chaos_relay_taking_runs, Received};
use crate::support::{eventually, wait_for};

/// Spawns 16 writers, writer `w` with its own handles on `db` and `outbox`
/// and a random generator seeded with `seed + w`.
fn spawn_writers<D, O, T, Fut>(
    db: &D,
    outbox: &O,
    seed: u64,
    writer: impl Fn(u64, D, O, fastrand::Rng) -> Fut,
) -> Vec<tokio::task::JoinHandle<T>>
where
    D: Clone,
    O: Clone,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    (0..16u64)
        .map(|w| {
            let rng = fastrand::Rng::with_seed(seed + w);
            tokio::spawn(writer(w, db.clone(), outbox.clone(), rng))
        })
        .collect()
}

/// The multiplier of `OUTBOX_ORDERING_SCALE`.
fn scale() -> u64 {
    std::env::var("OUTBOX_ORDERING_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

pub(crate) fn fast_retry() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(100))
        .max_attempts(10_000)
}

/// The buckets each of `relays` relays holds once they have settled: the
/// relay takes at most its ceiling share, so the others take the rest.
fn fair_share<B: Backend>(relays: usize) -> RangeInclusive<usize> {
    let most = B::BUCKETS.div_ceil(relays);
    B::BUCKETS.saturating_sub((relays - 1) * most)..=most
}

/// 16 writers and 4 relays whose publishers fail at random, before and
/// after delivering: every committed message arrives, nothing rolled back
/// does, duplicates only where a delivery was reported as failed or its
/// call abandoned, and per key the first deliveries and their numbers
/// follow commit order.
///
/// The leases last 10 s: a relay that stalls past its lease may publish
/// again what it had published (the documented fencing window, which the
/// fencing tests cover), and on a loaded machine a 2 s lease can lapse
/// from scheduling delays alone, where the publisher cannot see it (a
/// result that comes back after the lease's deadline, an acknowledgement
/// fenced off). The buckets spread over the relays by release, not by
/// expiry, so the longer lease changes nothing else here.
pub async fn many_writers_many_relays_random_failures_keep_commit_order<B: Backend>() {
    // The relays' warnings (failed acknowledgements, fencing, abandoned
    // calls) are printed with a failure's output: they say which window a
    // duplicate came through.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("outbox=warn")
        .try_init();
    // 39: behind PgBouncer in session mode (40 server connections a
    // database) the outbox's own NOTIFY connection is the 40th.
    let db = Arc::new(B::create(Pool::Connections(39)).await);
    let outbox = db.outbox();
    db.create_key_counters(300).await;

    let received = Arc::new(Received::default());
    // Two of them take runs of a key in one call (a publisher that keeps a
    // key's order), two one message per key per call; buckets move between
    // both kinds as leases change hands.
    let relays: Vec<RelayHandle> = (0..4)
        .map(|i| {
            chaos_relay_taking_runs(&outbox, &received, i, i % 2 == 1)
                .batch_size(50)
                .lease_ttl(Duration::from_secs(10))
                .spawn()
                .unwrap()
        })
        .collect();

    // 16 writers. Each transaction writes one to three keys; half of them
    // enqueue before touching the key's counter row, so the counter's lock
    // alone does not order them; one in ten rolls back.
    let transactions = 150 * scale();
    let writers = spawn_writers(
        &db,
        &outbox,
        1000,
        move |_, db, outbox, mut rng| async move {
            let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
            for _ in 0..transactions {
                let mut keys: Vec<String> = (0..rng.usize(1..=3))
                    .map(|_| format!("key-{}", rng.usize(0..300)))
                    .collect();
                keys.sort();
                keys.dedup();
                let enqueue_first = rng.bool();
                let rollback = rng.u8(0..10) == 0;
                let mut ids = Vec::new();
                let outcome: Result<bool, outbox::Error> = async {
                    let mut tx = db.begin().await;
                    for k in &keys {
                        let m = NewMessage::json("t", &serde_json::json!({ "key": k }))?
                            .with_partition_key(k.clone());
                        ids.push((k.clone(), m.id()));
                        if !enqueue_first {
                            // Touch the key's row first, enqueue after.
                            db.lock_key(&mut tx, k).await?;
                        }
                        outbox.enqueue(&mut tx, m).await?;
                    }
                    for (k, id) in &ids {
                        db.log_key(&mut tx, k, *id).await?;
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
                    Err(e) if B::is_deadlock(&e) => rolled_back.extend(ids),
                    Err(e) => panic!("writer failed: {e:?}"),
                }
            }
            (committed, rolled_back)
        },
    );
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
            start.elapsed() < Duration::from_secs(120 * scale()),
            "not every committed message arrived: {} of {}",
            committed.iter().filter(|id| seen.contains(id)).count(),
            committed.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Messages delivered but not acknowledged (a failure reported after
    // delivery) are published again, then acknowledged.
    outbox.drained(Duration::from_secs(120 * scale())).await;
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
    // reported as failed, or whose call was abandoned.
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
    let commit_order = db.key_log().await;
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
        "{}: {} committed, {} rolled back, {} deliveries, {} duplicates ({} ambiguous failures), {} order violations, longest run of a key in a call {}",
        B::NAME,
        committed.len(),
        rolled_back.len(),
        log.len(),
        dups.len(),
        ambiguous.len(),
        violations,
        received.longest_run.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(violations, 0);
    assert_eq!(outbox.pending().await, 0);
    db.close().await;
}

/// A backlog drained in full batches: each relay claims the next batch while
/// it publishes the current one, and a failure in the current batch must
/// hold back the key's later messages that the early claim already holds.
pub async fn prefetched_batches_hold_back_keys_with_a_failed_message<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
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
        let mut tx = db.begin().await;
        outbox.enqueue_batch(&mut tx, chunk.to_vec()).await.unwrap();
        tx.commit().await.unwrap();
    }

    let received = Arc::new(Received::default());
    let relays: Vec<RelayHandle> = (0..2)
        .map(|i| {
            chaos_relay(&outbox, &received, 77 + i)
                .batch_size(60)
                .spawn()
                .unwrap()
        })
        .collect();
    wait_for("the outbox drained", Duration::from_secs(120), || async {
        outbox.pending().await == 0
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
    db.close().await;
}

/// Records deliveries in the database, so they survive the publishing
/// process being killed.
struct Recorder<B> {
    db: Arc<B>,
    /// The process recording (0 for relays of the test process).
    relay: i32,
    /// Time spent after delivering, before confirming: the window in which
    /// the stall scenario freezes the process.
    confirm_after: Duration,
}

#[async_trait]
impl<B: Backend> Publisher for Recorder<B> {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let deliveries: Vec<Delivery> = batch.iter().map(|m| Delivery::of(m, self.relay)).collect();
        let r = self.db.record(&deliveries).await;
        if !self.confirm_after.is_zero() {
            tokio::time::sleep(self.confirm_after).await;
        }
        match r {
            Ok(()) => batch.iter().map(|_| Ok(())).collect(),
            Err(e) => {
                let e = e.to_string();
                batch
                    .iter()
                    .map(|_| Err(PublishError::transient(e.clone())))
                    .collect()
            }
        }
    }
}

/// A relay recording its deliveries as process `relay`: leases of 1 s,
/// per-key numbers on.
fn recording_relay<B: Backend>(db: &Arc<B>, relay: i32) -> RelayBuilder {
    recorder(db, relay, Duration::ZERO)
        .batch_size(200)
        .poll_interval(Duration::from_millis(50))
}

/// A relay publishing to a [`Recorder`] as `relay`, which confirms each
/// message after `confirm_after`; per-key numbers on, short leases.
fn recorder<B: Backend>(db: &Arc<B>, relay: i32, confirm_after: Duration) -> RelayBuilder {
    let publisher = Recorder {
        db: db.clone(),
        relay,
        confirm_after,
    };
    db.outbox()
        .relay(publisher)
        .lease_ttl(Duration::from_secs(1))
        .key_sequences(true)
        .retry(fast_retry())
}

/// A recording relay that publishes one message at a time and waits
/// `confirm_after` before confirming each.
fn slow_recording_relay<B: Backend>(db: &Arc<B>, confirm_after: Duration) -> RelayBuilder {
    recorder(db, std::process::id() as i32, confirm_after)
        .batch_size(1)
        .poll_interval(Duration::from_millis(20))
}

/// The body of a relay process started by the crash scenarios: a recording
/// relay on the database at `location`, run until the process is killed.
pub fn crash_child_relay<B: Backend>(location: &str) {
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
        let db = Arc::new(B::open(location).await);
        let relay = match delay {
            Some(d) => slow_recording_relay(&db, d),
            None => recording_relay(&db, std::process::id() as i32),
        };
        let _relay = relay.spawn().unwrap();
        // Runs until killed.
        std::future::pending::<()>().await;
    });
}

fn child_command<B: Backend>(db: &B) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "crash_child_relay",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("OUTBOX_CRASH_CHILD_BACKEND", B::NAME)
    .env("OUTBOX_CRASH_CHILD_DB", db.location());
    c
}

fn spawn_child<B: Backend>(db: &B) -> Child {
    child_command(db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start relay process")
}

/// Relay processes SIGKILLed at random moments while ten writers write
/// 50,000 messages: nothing is lost, per key the first deliveries follow
/// commit order, and a redelivery carries its original per-key number.
pub async fn relay_processes_killed_at_random_lose_nothing_and_keep_order<B: Backend>() {
    const KEYS: i64 = 500;
    const PER_TX: i64 = 100;
    let txs = 500 * scale() as i64;
    let total = txs * PER_TX;
    let lease_ttl = Duration::from_secs(1);
    let db = Arc::new(B::create(Pool::Connections(30)).await);
    let outbox = db.outbox();
    db.create_received().await;

    // Two relays that are never killed. With one bucket they would hold it
    // for good and the killed processes would never publish; there the
    // processes take turns alone, and a steady relay joins after the last.
    let steady_during_kills = if B::BUCKETS > 1 { 2 } else { 0 };
    let mut steady: Vec<RelayHandle> = (0..steady_during_kills)
        .map(|_| recording_relay(&db, 0).spawn().unwrap())
        .collect();

    // 10 writers; writer w owns the keys k with k % 10 == w, so each key's
    // commit order is its writer's order, carried in the payload as n.
    let mut writers = Vec::new();
    for w in 0..10i64 {
        let db = db.clone();
        let outbox = outbox.clone();
        writers.push(tokio::spawn(async move {
            let mut next: HashMap<i64, i64> = HashMap::new();
            let mut rng = fastrand::Rng::with_seed(w as u64);
            for _ in 0..txs / 10 {
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
                let mut tx = db.begin().await;
                outbox.enqueue_batch(&mut tx, batch).await.unwrap();
                outbox.commit(tx).await.unwrap();
                tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
            }
        }));
    }

    // Kill a relay process at random moments, at least 10 times, while the
    // writers write. A lone bucket changes hands only once the killed
    // holder's lease expires, so there each process lives a lease longer.
    let head_start = if B::BUCKETS > 1 {
        Duration::ZERO
    } else {
        lease_ttl
    };
    let mut kills = 0;
    let mut rng = fastrand::Rng::with_seed(42);
    let start = Instant::now();
    loop {
        let mut child = spawn_child(&*db);
        tokio::time::sleep(head_start + Duration::from_millis(rng.u64(200..1200))).await;
        child.kill().expect("SIGKILL the relay process");
        child.wait().unwrap();
        kills += 1;
        let delivered = db.delivered().await;
        if kills >= 10 && delivered >= total {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300 * scale()),
            "only {delivered} of {total} delivered after {kills} kills"
        );
    }
    for w in writers {
        w.await.unwrap();
    }
    if steady.is_empty() {
        steady.push(recording_relay(&db, 0).spawn().unwrap());
    }
    loop {
        let delivered = db.delivered().await;
        if delivered >= total {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(400 * scale()),
            "lost messages: {delivered} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Messages delivered but not acknowledged (a killed relay) are
    // published again, then acknowledged.
    outbox.drained(Duration::from_secs(120 * scale())).await;
    for r in steady {
        r.shutdown().await.unwrap();
    }

    let rows = db.deliveries().await;
    let mut seen = HashSet::new();
    let mut last_first: HashMap<String, i64> = HashMap::new();
    let mut violations = 0;
    let mut by_children = 0;
    let mut number_of: HashMap<uuid::Uuid, i64> = HashMap::new();
    for d in &rows {
        if d.relay != 0 {
            by_children += 1;
        }
        // The writer's own count per key is its commit order; the relay's
        // per-key number must match it, also on redelivery after a kill.
        assert_eq!(
            d.ks, d.n,
            "key {}: per-key number {} for the {}th commit",
            d.key, d.ks, d.n
        );
        assert_eq!(*number_of.entry(d.id).or_insert(d.ks), d.ks);
        if seen.insert(d.id) {
            let prev = last_first.insert(d.key.clone(), d.n);
            if prev.is_some_and(|p| p >= d.n) {
                violations += 1;
            }
        }
    }
    let duplicates = rows.len() - seen.len();
    eprintln!(
        "{}: {total} messages, {kills} relay processes killed, {} deliveries ({by_children} by killed processes), {duplicates} duplicates, {violations} order violations",
        B::NAME,
        rows.len()
    );
    assert_eq!(seen.len() as i64, total, "no loss");
    assert_eq!(violations, 0, "per-key order");
    assert!(by_children > 0, "the killed relays took part");
    assert_eq!(outbox.pending().await, 0);
    db.close().await;
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} failed");
}

/// A relay process frozen (SIGSTOP) between delivering a message and
/// confirming it loses its leases to another relay, which publishes
/// everything in order; thawed, its acknowledgement is refused by fencing
/// and it publishes nothing more.
pub async fn a_frozen_relay_is_fenced_and_publishes_nothing_after_it_thaws<B: Backend>() {
    let db = Arc::new(B::fresh().await);
    let outbox = db.outbox();
    db.create_received().await;
    let by = |relay: i32| {
        let db = db.clone();
        async move {
            db.deliveries()
                .await
                .into_iter()
                .filter(|d| d.relay == relay)
                .collect::<Vec<_>>()
        }
    };

    // Relay C, a separate process, delivers one message at a time and
    // takes 400 ms to confirm each.
    let mut child = child_command(&*db)
        .env("OUTBOX_CRASH_CHILD_DELAY_MS", "400")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start relay process");
    let pid = child.id() as i32;
    let start = Instant::now();
    loop {
        if db.owned_leases().await == B::BUCKETS as i64 {
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
    outbox.enqueue_batch_alone(batch).await.unwrap();

    // Freeze C right after it delivered its first message, before it
    // confirms (a GC pause, a frozen VM).
    loop {
        if !by(pid).await.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "relay process never published"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Freeze it inside its 400 ms wait, not in the middle of a statement:
    // on SQLite a process frozen while it holds the one write lock would
    // stop every other writer, the relay that must take over included.
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(&child, "-STOP");
    let frozen_with = by(pid).await.len();

    // Relay B takes over once C's leases expire and publishes everything.
    let b = recording_relay(&db, 0).spawn().unwrap();
    loop {
        let by_b: HashSet<_> = by(0).await.into_iter().map(|d| d.id).collect();
        if by_b.len() == 5 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "B did not take over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // C thaws: its confirmation arrives after its lease deadline, so it
    // either abandons the call unacknowledged (its own deadline check) or,
    // if it tries, has its acknowledgement refused (fencing); either way it
    // publishes nothing more.
    signal(&child, "-CONT");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = by(pid).await.len();
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    b.shutdown().await.unwrap();

    assert_eq!(
        after, frozen_with,
        "the thawed relay published nothing more"
    );
    assert!(
        stderr.contains("acknowledgements refused")
            || stderr.contains("abandoning a publisher call"),
        "the thawed relay abandoned its call or was fenced; its log:\n{stderr}"
    );
    // B published every message, in order, numbered 1..5.
    let rows: Vec<(i64, i64)> = by(0).await.iter().map(|d| (d.n, d.ks)).collect();
    assert_eq!(rows, (1..=5).map(|n| (n, n)).collect::<Vec<_>>());
    assert_eq!(outbox.pending().await, 0);
    db.close().await;
}

/// A publish call that takes longer than the lease: the relay renews while
/// it waits, so no other relay takes the keys and nothing is published
/// twice.
pub async fn a_slow_publisher_keeps_its_leases<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
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
    let a = outbox
        .relay(slow(log.clone(), ttl * 3))
        .lease_ttl(ttl)
        .poll_interval(Duration::from_millis(10))
        .spawn()
        .unwrap();
    every_bucket_held::<B>(&a, "A holds every bucket").await;
    let b = outbox
        .relay(slow(log.clone(), Duration::ZERO))
        .lease_ttl(ttl)
        .poll_interval(Duration::from_millis(10))
        .spawn()
        .unwrap();
    let ids: Vec<MessageId> = {
        let batch: Vec<_> = (0..3)
            .map(|i| NewMessage::json("t", &i).unwrap().with_partition_key("k"))
            .collect();
        let ids = batch.iter().map(|m| m.id()).collect();
        outbox.enqueue_batch_alone(batch).await.unwrap();
        outbox.wake();
        ids
    };
    eventually("all published", || log.lock().unwrap().len() >= 3).await;
    tokio::time::sleep(ttl).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert_eq!(*log.lock().unwrap(), ids, "once each, in order");
    assert_eq!(outbox.pending().await, 0);
    db.close().await;
}

/// Relays joining share the buckets fairly; the first relay leaving (the
/// one holding the bucket, on SQLite) hands its buckets to those left.
pub async fn leases_rebalance_when_relays_join_and_leave<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let relay = || {
        outbox
            .relay(InMemoryPublisher::new())
            .lease_ttl(Duration::from_millis(600))
            .poll_interval(Duration::from_millis(20))
            .spawn()
            .unwrap()
    };
    let a = relay();
    every_bucket_held::<B>(&a, "A alone takes every bucket").await;
    let b = relay();
    let c = relay();
    let three = fair_share::<B>(3);
    eventually("three relays share the buckets fairly", || {
        let (x, y, z) = (
            a.health().leased_buckets,
            b.health().leased_buckets,
            c.health().leased_buckets,
        );
        x + y + z == B::BUCKETS && [x, y, z].iter().all(|n| three.contains(n))
    })
    .await;
    // A clean shutdown hands its buckets over at once.
    a.shutdown().await.unwrap();
    let two = fair_share::<B>(2);
    eventually("two relays share the leaver's buckets", || {
        let (y, z) = (b.health().leased_buckets, c.health().leased_buckets);
        y + z == B::BUCKETS && two.contains(&y) && two.contains(&z)
    })
    .await;
    assert_eq!(db.lease_owners().await, B::BUCKETS.min(2) as i64);
    b.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
    db.close().await;
}

/// 16 writers and 4 relays, for 5 seconds times `OUTBOX_ORDERING_SCALE`
/// (12 makes the minute the MySQL backend is specified with): writers that
/// only enqueue (batches of 1 to 3 keys, or messages of one key) never get
/// an error, a deadlock least of all, whatever the relays' claims, parking
/// and acknowledgements lock meanwhile; and everything committed arrives.
pub async fn writers_never_deadlock_with_busy_relays<B: Backend>() {
    // One connection a writer and a few to spare: the relays have their
    // own, and a pooler in front holds 40 server connections in all.
    let db = Arc::new(B::create(Pool::Connections(20)).await);
    let outbox = db.outbox();
    let publisher = outbox::InMemoryPublisher::new();
    let relays = outbox.fast_relays(4, &publisher, 100);
    let until = Instant::now() + Duration::from_secs(5 * scale());
    let writers = spawn_writers(
        &db,
        &outbox,
        7000,
        move |w, db, outbox, mut rng| async move {
            let mut committed = 0usize;
            while Instant::now() < until {
                // A batch locks its keys' slots in one order (ascending
                // slot); messages enqueued one by one take their locks in
                // the order given, which could cross another
                // transaction's, relays or not: those stay on one key.
                let batch = rng.bool();
                let key = rng.usize(0..200);
                let keys: Vec<usize> = (0..rng.usize(1..=3))
                    .map(|_| if batch { rng.usize(0..200) } else { key })
                    .collect();
                let messages: Vec<NewMessage> = keys
                    .iter()
                    .map(|k| {
                        NewMessage::json("t", &serde_json::json!({ "w": w }))
                            .unwrap()
                            .with_partition_key(format!("key-{k}"))
                    })
                    .collect();
                let n = messages.len();
                let mut tx = db.begin().await;
                if batch {
                    outbox.enqueue_batch(&mut tx, messages).await.unwrap();
                } else {
                    for m in messages {
                        outbox.enqueue(&mut tx, m).await.unwrap();
                    }
                }
                outbox.commit(tx).await.unwrap();
                committed += n;
            }
            committed
        },
    );
    let mut committed = 0;
    for w in writers {
        committed += w.await.expect("a writer got an error");
    }
    assert!(committed > 100, "{committed}");
    outbox.drained(Duration::from_secs(120)).await;
    for r in relays {
        r.shutdown().await.unwrap();
    }
    let ids: HashSet<MessageId> = publisher.messages().iter().map(|m| m.id()).collect();
    assert_eq!(
        ids.len(),
        committed,
        "every committed message published once"
    );
    db.close().await;
}
