//! The relay: retries and dead letters, ordering policies, several relays
//! sharing one outbox, shutdown, retention, wake-up on commit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{
    Error, FnPublisher, InMemoryPublisher, MessageId, OrderingPolicy, OutboxMessage, PublishError,
    Publisher, RelayHandle, Retention, RetryPolicy,
};

use crate::backend::{every_bucket_held, Backend, Pool, TestOutbox};
use crate::messages::{judged, keyed, n_of, numbered};
use crate::support::{eventually, wait_for};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A fast relay that publishes the topic `metrics` unordered and retries
/// with `retry`.
fn unordered_metrics_relay(
    outbox: &impl TestOutbox,
    publisher: impl Publisher + 'static,
    retry: RetryPolicy,
) -> RelayHandle {
    outbox
        .fast_relay(publisher)
        .topic_ordering("metrics", OrderingPolicy::Unordered)
        .retry(retry)
        .spawn()
        .unwrap()
}

/// Fails the test process if not dropped within `limit` of real time.
fn real_time_watchdog(what: &'static str, limit: Duration) -> impl Drop {
    struct Guard(Arc<AtomicBool>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if flag.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("timed out waiting for: {what}");
        std::process::exit(1);
    });
    Guard(done)
}

/// Forwards every message to `published`, except `failing`, which fails
/// transiently `failures` times first; logs each attempt with its
/// (virtual) time.
fn flaky_publisher(
    failing: MessageId,
    failures: usize,
    log: Arc<Mutex<Vec<(MessageId, tokio::time::Instant)>>>,
    published: InMemoryPublisher,
) -> impl Publisher {
    let tries = AtomicUsize::new(0);
    judged(&published, move |m| {
        log.lock()
            .unwrap()
            .push((m.id(), tokio::time::Instant::now()));
        if m.id() != failing {
            return None;
        }
        let n = tries.fetch_add(1, Ordering::SeqCst) + 1;
        (n <= failures).then(|| {
            PublishError::transient(std::io::Error::other(format!(
                "broker unavailable (attempt {n})"
            )))
        })
    })
}

/// A transient failure is retried with exponential backoff (never early),
/// and the key's later message waits for it without being tried.
pub async fn transient_failures_back_off_exponentially_in_key_order<B: Backend>() {
    // Paused time: the relay's backoff runs on tokio's clock, so 70 virtual
    // seconds of backoff pass without real sleeps. Time is paused once the
    // pool's connections are open, and the pool must never time out while
    // time jumps.
    let db = B::create(Pool::PausedTime).await;
    let outbox = db.outbox();
    let first = outbox.enqueue_alone(keyed("t", "k", 1)).await.unwrap();
    tokio::time::pause();
    // A later message of the same key must wait behind the failing one.
    let later = outbox.enqueue_alone(keyed("t", "k", 2)).await.unwrap();

    let log = Arc::new(Mutex::new(Vec::new()));
    let published = InMemoryPublisher::new();
    let mut arrivals = published.channel();
    let relay = outbox
        .relay(flaky_publisher(
            first.id(),
            3,
            log.clone(),
            published.clone(),
        ))
        .retry(
            RetryPolicy::new()
                .initial_delay(Duration::from_secs(10))
                .multiplier(2.0)
                .max_delay(Duration::from_secs(60))
                .jitter(false),
        )
        .ordering(OrderingPolicy::Ordered)
        .spawn()
        .unwrap();
    // Paused time jumps to the next timer whenever the runtime waits for
    // the database. A 1 ms ticker bounds each jump, so the clock cannot leap
    // to some far-off timer (a pool timeout) while a query is in flight.
    let ticker = tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let real_start = std::time::Instant::now();
    let watchdog = real_time_watchdog("published after retries", Duration::from_secs(60));
    arrivals.recv().await.unwrap();
    arrivals.recv().await.unwrap();
    drop(watchdog);
    relay.shutdown().await.unwrap();
    ticker.abort();

    let log = log.lock().unwrap().clone();
    let attempts: Vec<_> = log.iter().filter(|(id, _)| *id == first.id()).collect();
    assert_eq!(attempts.len(), 4, "3 failures then success");
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].1 - w[0].1).collect();
    // Never early, and growing by the policy: 10 s, 20 s, 40 s of virtual
    // time. (No upper bound: paused time also runs on while a query is in
    // flight, by as much as the machine is slow.)
    for (gap, expected) in gaps.iter().zip([10, 20, 40]) {
        let expected = Duration::from_secs(expected);
        assert!(
            *gap >= expected,
            "gap {gap:?} shorter than {expected:?} (all gaps {gaps:?})"
        );
    }
    // 70 virtual seconds of backoff took a fraction of that in real time.
    assert!(
        real_start.elapsed() < Duration::from_secs(30),
        "backoff slept in real time"
    );
    assert_eq!(
        log.iter().filter(|(id, _)| *id == later.id()).count(),
        1,
        "the later message was not tried while the key was blocked"
    );
    let got: Vec<_> = published
        .messages()
        .iter()
        .map(|m| (m.id(), m.attempt()))
        .collect();
    assert_eq!(
        got,
        vec![(first.id(), 4), (later.id(), 1)],
        "key order kept across retries"
    );
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    db.close().await;
}

/// Enqueues messages numbered `range` on topic `t`, without keys, and
/// wakes the relays.
async fn enqueue_numbered<O: TestOutbox>(outbox: &O, range: std::ops::Range<u64>) {
    let messages = range.map(|n| numbered("t", n)).collect();
    outbox.enqueue_batch_alone(messages).await.unwrap();
    outbox.wake();
}

/// Two messages of key `k` on `topic`: the first to fail, the one behind
/// it.
async fn poison_and_behind<O: TestOutbox>(outbox: &O, topic: &str) -> (MessageId, MessageId) {
    let poison = outbox.enqueue_id(keyed(topic, "k", 1)).await;
    (poison, outbox.enqueue_id(keyed(topic, "k", 2)).await)
}

/// A permanent failure is dead-lettered at once with its error; under the
/// ordered policy its key stays blocked (other keys flow) until the dead
/// letter is replayed, which publishes it before the key's later messages.
pub async fn permanent_failure_is_dead_lettered_then_replayed<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let (poison, behind) = poison_and_behind(&outbox, "t").await;
    let other_key = outbox.enqueue_id(keyed("t", "j", 1)).await;

    let reject = Arc::new(AtomicBool::new(true));
    let published = InMemoryPublisher::new();
    let publisher = {
        let reject = reject.clone();
        judged(&published, move |m| {
            (reject.load(Ordering::SeqCst) && m.id() == poison).then(|| {
                PublishError::permanent(std::io::Error::other("schema rejected by broker"))
            })
        })
    };
    let relay = outbox.fast_relay(publisher).spawn().unwrap();
    eventually("other key flows", || {
        published.messages().iter().any(|m| m.id() == other_key)
    })
    .await;
    let dead = outbox.dead_letters_when(1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id(), poison);
    assert_eq!(dead[0].attempts, 1, "permanent: no retry");
    assert!(
        dead[0].last_error.contains("permanent publish failure")
            && dead[0].last_error.contains("schema rejected by broker"),
        "{}",
        dead[0].last_error
    );
    assert_eq!(dead[0].message.partition_key(), Some("k"));
    assert_eq!(n_of(&dead[0].message), 1);
    // Ordered policy: the key stays blocked behind its dead letter, and a
    // dead letter is not pending.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!published.messages().iter().any(|m| m.id() == behind));
    assert_eq!(outbox.pending().await, 1);
    // Other keys still flow.
    let other_later = outbox.enqueue_id(keyed("t", "j", 2)).await;
    outbox.wake();
    eventually("the other key's later message", || {
        published.messages().iter().any(|m| m.id() == other_later)
    })
    .await;
    assert!(!published.messages().iter().any(|m| m.id() == behind));

    assert!(matches!(
        outbox.replay_dead_letter(MessageId::new()).await,
        Err(Error::DeadLetterNotFound(_))
    ));
    reject.store(false, Ordering::SeqCst);
    outbox.replay_dead_letter(poison).await.unwrap();
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    eventually("replayed and unblocked", || published.len() == 4).await;
    wait_for("an empty outbox", TIMEOUT, || async {
        outbox.pending().await == 0
    })
    .await;
    relay.shutdown().await.unwrap();
    let order: Vec<_> = published
        .messages()
        .iter()
        .filter(|m| m.partition_key() == Some("k"))
        .map(|m| m.id())
        .collect();
    assert_eq!(order, vec![poison, behind], "replay keeps key order");
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    assert!(matches!(
        outbox.replay_dead_letter(poison).await.unwrap_err(),
        Error::DeadLetterNotFound(_)
    ));
    db.close().await;
}

/// A publisher that rejects messages for good while `fail` is set, and
/// records what it accepted.
fn switchable_publisher(
    fail: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<MessageId>>>,
) -> impl Publisher {
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

/// Discarding a dead letter drops it for good and unblocks its key;
/// replaying all publishes the rest, once.
pub async fn discard_and_replay_all<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let fail = Arc::new(AtomicBool::new(true));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let relay = outbox
        .relay(switchable_publisher(fail.clone(), accepted.clone()))
        .spawn()
        .unwrap();

    let doomed = numbered("t", 1).with_partition_key("k");
    let doomed_id = doomed.id();
    let (a, b) = (numbered("t", 2), numbered("t", 3).with_partition_key("j"));
    let (a_id, b_id) = (a.id(), b.id());
    let mut tx = db.begin().await;
    outbox
        .enqueue_batch(&mut tx, vec![doomed, a, b])
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    outbox.dead_letters_when(3).await;
    fail.store(false, Ordering::SeqCst);

    outbox.discard_dead_letter(doomed_id).await.unwrap();
    assert!(matches!(
        outbox.discard_dead_letter(doomed_id).await,
        Err(Error::DeadLetterNotFound(_))
    ));
    // Discarding unblocked the key.
    let next = numbered("t", 4).with_partition_key("k");
    let next_id = next.id();
    outbox.enqueue_alone(next).await.unwrap();
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
        outbox.pending().await == 0
    })
    .await;
    relay.shutdown().await.unwrap();
    let accepted = accepted.lock().unwrap().clone();
    assert!(!accepted.contains(&doomed_id));
    assert_eq!(accepted.len(), 3, "each published once: {accepted:?}");
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    db.close().await;
}

/// On a topic whose policy is unordered, a failing message is retried and
/// dead-lettered on its own while its key's later messages go on.
pub async fn unordered_topic_parks_the_failure_and_the_key_moves_on<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let (poison, behind) = poison_and_behind(&outbox, "metrics").await;
    let published = InMemoryPublisher::new();
    let p2 = published.clone();
    let publisher = FnPublisher::new(move |m: OutboxMessage| {
        let published = p2.clone();
        async move {
            if m.id() == poison {
                return Err(PublishError::transient(std::io::Error::other("down")));
            }
            published.publish(std::slice::from_ref(&m)).await.remove(0)
        }
    });
    let relay = unordered_metrics_relay(
        &outbox,
        publisher,
        RetryPolicy::new()
            .initial_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(20))
            .max_attempts(3),
    );
    eventually("later message of the key published", || {
        published.messages().iter().any(|m| m.id() == behind)
    })
    .await;
    let dead = outbox.dead_letters_when(1).await;
    relay.shutdown().await.unwrap();
    assert_eq!(dead[0].id(), poison);
    assert_eq!(dead[0].attempts, 3, "dead after max attempts");
    assert_eq!(outbox.pending().await, 0);
    db.close().await;
}

/// A message whose retry is due seconds away sleeps out of the claims'
/// path (claims no longer read it) while its key moves on under the
/// unordered policy, then wakes and is published on time; under the
/// ordered policy the key's later messages wait for it.
pub async fn a_distant_retry_sleeps_then_wakes_in_time<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let messages = B::table(B::DEFAULT_PREFIX, "messages");
    let sleeping = format!("SELECT count(*) FROM {messages} WHERE sleeping = true");
    let (loose, loose_behind) = poison_and_behind(&outbox, "metrics").await;
    let (strict, strict_behind) = poison_and_behind(&outbox, "t").await;
    let first_try = Arc::new(Mutex::new(HashSet::new()));
    let published = InMemoryPublisher::new();
    let publisher = {
        let first_try = first_try.clone();
        judged(&published, move |m| {
            // Each of the two heads fails its first attempt.
            ((m.id() == loose || m.id() == strict) && first_try.lock().unwrap().insert(m.id()))
                .then(|| PublishError::transient("the broker is away"))
        })
    };
    let relay = unordered_metrics_relay(
        &outbox,
        publisher,
        RetryPolicy::new()
            .initial_delay(Duration::from_secs(4))
            .jitter(false),
    );
    wait_for("both heads asleep", TIMEOUT, || async {
        db.count(&sleeping).await == 2
    })
    .await;
    let ids = || {
        published
            .messages()
            .iter()
            .map(|m| m.id())
            .collect::<Vec<_>>()
    };
    wait_for("the unordered key moving on", TIMEOUT, || async {
        ids().contains(&loose_behind)
    })
    .await;
    assert!(!ids().contains(&strict_behind), "the ordered key waits");
    wait_for("both heads woken and published", TIMEOUT, || async {
        let ids = ids();
        ids.contains(&loose) && ids.contains(&strict_behind)
    })
    .await;
    relay.shutdown().await.unwrap();
    let ids = ids();
    let at = |id| ids.iter().position(|x| *x == id).unwrap();
    assert!(at(strict) < at(strict_behind), "ordered key in order");
    assert_eq!(db.count(&sleeping).await, 0);
    assert_eq!(outbox.pending().await, 0);
    db.close().await;
}

/// Four relays and eight concurrent writers (5,000 messages over 50 keys,
/// one transaction in five rolled back): every committed message is
/// published exactly once, nothing rolled back is, and each key goes out in
/// commit order.
pub async fn several_relays_never_publish_twice_and_keep_key_order<B: Backend>() {
    let db = Arc::new(B::create(Pool::Connections(20)).await);
    let outbox = db.outbox();
    let publisher = InMemoryPublisher::new();
    let relays = outbox.fast_relays(4, &publisher, 100);
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let outbox = outbox.clone();
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..125u64 {
                let mut tx = db.begin().await;
                let mut ids = Vec::new();
                for j in 0..5u64 {
                    let key = format!("key-{}", (w * 7 + i * 3 + j) % 50);
                    let m = keyed("t", &key, w * 1_000_000 + i * 10 + j);
                    ids.push(m.id());
                    outbox.enqueue(&mut tx, m).await.unwrap();
                }
                if i % 5 == 4 {
                    tx.rollback().await.unwrap();
                } else {
                    outbox.commit(tx).await.unwrap();
                    committed.extend(ids);
                }
            }
            committed
        }));
    }
    let mut committed = HashSet::new();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    let n = committed.len();
    assert_eq!(n, 4000);
    eventually("every committed message published", || publisher.len() >= n).await;
    for r in relays {
        r.shutdown().await.unwrap();
    }
    let got = publisher.messages();
    let mut seen = HashSet::new();
    for m in &got {
        assert!(seen.insert(m.id()), "published twice: {}", m.id());
        assert!(
            committed.contains(&m.id()),
            "from a rolled-back transaction"
        );
    }
    assert_eq!(seen.len(), n);
    // Per key, positions (commit order) increase in publish order.
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &got {
        let k = m.partition_key().unwrap().to_owned();
        let prev = last.insert(k.clone(), m.position());
        assert!(
            prev.is_none_or(|p| p < m.position()),
            "key {k} out of order"
        );
    }
    db.close().await;
}

/// Three relays drain a backlog of 5,000 messages over 300 keys without a
/// duplicate in a failure-free run.
pub async fn several_relays_share_thousands_without_duplicates<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let mut tx = db.begin().await;
    let batch: Vec<_> = (0..5000u64)
        .map(|i| keyed("t", &format!("k{}", i % 300), i))
        .collect();
    outbox.enqueue_batch(&mut tx, batch).await.unwrap();
    tx.commit().await.unwrap();
    let publisher = InMemoryPublisher::new();
    let relays = outbox.fast_relays(3, &publisher, 50);
    eventually("all 5000 published", || publisher.len() >= 5000).await;
    for r in relays {
        r.shutdown().await.unwrap();
    }
    let ids: HashSet<_> = publisher.messages().iter().map(|m| m.id()).collect();
    assert_eq!(ids.len(), 5000);
    assert_eq!(publisher.len(), 5000, "no duplicates in a failure-free run");
    db.close().await;
}

/// A second relay takes its share of the buckets (with one bucket, none:
/// it stands by); when the first stops, it releases its leases and the
/// second takes over every bucket and publishes what follows.
pub async fn standby_takes_over<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let (p1, p2) = (InMemoryPublisher::new(), InMemoryPublisher::new());
    let start = |publisher: InMemoryPublisher| {
        let relay = outbox
            .relay(publisher)
            .lease_ttl(Duration::from_millis(600));
        let relay = relay.poll_interval(Duration::from_millis(50));
        relay.spawn().unwrap()
    };
    let r1 = start(p1.clone());
    wait_for("the first relay's leases", TIMEOUT, || async {
        r1.health().leased_buckets == B::BUCKETS
    })
    .await;
    let r2 = start(p2.clone());
    // Two relays split the buckets, the first keeping the larger half.
    let (first_share, second_share) = (B::BUCKETS.div_ceil(2), B::BUCKETS / 2);
    wait_for("the buckets split", TIMEOUT, || async {
        r1.health().leased_buckets == first_share && r2.health().leased_buckets == second_share
    })
    .await;

    enqueue_numbered(&outbox, 0..50).await;
    wait_for("the first batch", TIMEOUT, || async {
        p1.len() + p2.len() >= 50 && outbox.pending().await == 0
    })
    .await;
    assert_eq!(r1.health().leased_buckets, first_share);
    assert_eq!(r2.health().leased_buckets, second_share);
    assert_eq!(p1.len() + p2.len(), 50, "each published once");
    if second_share == 0 {
        assert_eq!(p1.len(), 50);
        assert!(p2.is_empty(), "a relay without a bucket publishes nothing");
    }
    let (before1, before2) = (p1.len(), p2.len());

    // Stopping the first relay releases its leases; the second takes over.
    r1.shutdown().await.unwrap();
    wait_for("the second relay's leases", TIMEOUT, || async {
        r2.health().leased_buckets == B::BUCKETS
    })
    .await;
    enqueue_numbered(&outbox, 50..80).await;
    wait_for("the second batch", TIMEOUT, || async {
        p2.len() >= before2 + 30 && outbox.pending().await == 0
    })
    .await;
    r2.shutdown().await.unwrap();
    assert_eq!(p1.len(), before1);
    assert_eq!(p2.len(), before2 + 30);
    db.close().await;
}

/// Shutdown lets the batch in flight finish and acknowledge, starts no new
/// one, and a later relay publishes the rest: nothing lost, nothing twice.
pub async fn shutdown_during_a_batch_loses_nothing<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let all: Vec<_> = (0..200u64)
        .map(|i| keyed("t", &format!("k{i}"), i))
        .collect();
    let ids: HashSet<_> = all.iter().map(|m| m.id()).collect();
    outbox.enqueue_batch_alone(all).await.unwrap();

    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(tokio::sync::Notify::new());
    let published = InMemoryPublisher::new();
    let publisher = {
        let gate = gate.clone();
        let entered = entered.clone();
        let published = published.clone();
        FnPublisher::new(move |m: OutboxMessage| {
            let gate = gate.clone();
            let entered = entered.clone();
            let published = published.clone();
            async move {
                entered.notify_one();
                gate.acquire().await.unwrap().forget();
                published.publish(std::slice::from_ref(&m)).await.remove(0)
            }
        })
    };
    let relay = outbox.fast_relay(publisher).batch_size(50).spawn().unwrap();
    entered.notified().await; // a batch is in flight
    let stopping = tokio::spawn(relay.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!stopping.is_finished(), "shutdown waits for the batch");
    gate.add_permits(10_000);
    stopping.await.unwrap().unwrap();
    assert_eq!(
        published.len(),
        50,
        "the in-flight batch finished, no new one started"
    );
    assert_eq!(outbox.pending().await, 150, "its acknowledgement committed");

    let relay = outbox.fast_relay(published.clone()).spawn().unwrap();
    eventually("the rest published", || published.len() >= 200).await;
    relay.shutdown().await.unwrap();
    let got: HashSet<_> = published.messages().iter().map(|m| m.id()).collect();
    assert_eq!(got, ids);
    assert_eq!(published.len(), 200);
    db.close().await;
}

/// A publisher call that never returns cannot hang `shutdown()`: after the
/// grace period the call is abandoned, the relay gives its leases back and
/// returns, and the message stays pending for the next relay, which
/// publishes it. Prints how long `shutdown()` took.
pub async fn shutdown_abandons_a_publisher_that_never_returns<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let id = outbox.enqueue_id(keyed("t", "k", 1)).await;
    let entered = Arc::new(tokio::sync::Notify::new());
    let hung = {
        let entered = entered.clone();
        FnPublisher::new(move |_: OutboxMessage| {
            entered.notify_one();
            std::future::pending::<Result<(), PublishError>>()
        })
    };
    let relay = outbox
        .fast_relay(hung)
        .shutdown_grace(Duration::from_secs(1))
        .spawn()
        .unwrap();
    entered.notified().await;
    let watchdog = real_time_watchdog("shutdown with a hung publisher", Duration::from_secs(30));
    let started = std::time::Instant::now();
    relay.shutdown().await.unwrap();
    println!(
        "{}: shutdown with a hung publisher and a 1 s grace took {:?}",
        B::NAME,
        started.elapsed()
    );
    drop(watchdog);
    assert_eq!(outbox.pending().await, 1, "the abandoned message stays");
    let published = InMemoryPublisher::new();
    let next = outbox.fast_relay(published.clone()).spawn().unwrap();
    eventually("the next relay publishes it", || published.len() == 1).await;
    next.shutdown().await.unwrap();
    assert_eq!(published.messages()[0].id(), id);
    db.close().await;
}

/// Records the payload sizes of every publisher call, and publishes.
#[derive(Clone, Default)]
struct CallSizes {
    calls: Arc<Mutex<Vec<Vec<usize>>>>,
}

#[async_trait::async_trait]
impl Publisher for CallSizes {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let sizes = batch.iter().map(|m| m.payload().len()).collect();
        self.calls.lock().unwrap().push(sizes);
        batch.iter().map(|_| Ok(())).collect()
    }
}

/// A relay's rounds hold at most its byte budget plus one payload: a
/// message larger than the whole budget goes alone, and twenty keyless
/// messages of 1,000 bytes under a 2,500-byte budget go at most three at a
/// time (the third starts within the budget), each once.
pub async fn rounds_stop_at_the_byte_budget<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let mut messages = vec![outbox::NewMessage::bytes("t", vec![99; 10_000])];
    messages.extend((0..20u8).map(|n| outbox::NewMessage::bytes("t", vec![n; 1000])));
    outbox.enqueue_batch_alone(messages).await.unwrap();
    let publisher = CallSizes::default();
    let relay = outbox
        .fast_relay(publisher.clone())
        .max_batch_bytes(2_500)
        .spawn()
        .unwrap();
    outbox.drained(TIMEOUT).await;
    relay.shutdown().await.unwrap();
    let calls = publisher.calls.lock().unwrap().clone();
    assert_eq!(calls[0], [10_000], "the large message alone: {calls:?}");
    let sizes: Vec<usize> = calls.iter().flatten().copied().collect();
    assert_eq!(sizes.len(), 21, "each message once: {calls:?}");
    for call in &calls {
        let before_last: usize = call[..call.len() - 1].iter().sum();
        assert!(before_last < 2_500, "a call past its budget: {calls:?}");
    }
    assert!(calls.len() >= 8, "{calls:?}");
    db.close().await;
}

/// With a retention window, published messages are kept (in order, intact)
/// instead of deleted, then purged once older than the window.
pub async fn retention_keeps_published_rows_then_purges_them<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let messages: Vec<_> = (0..10u64)
        .map(|i| keyed("kept", "k", i).with_header("h", "v"))
        .collect();
    let ids: Vec<_> = messages.iter().map(|m| m.id()).collect();
    let mut tx = db.begin().await;
    outbox.enqueue_batch(&mut tx, messages).await.unwrap();
    outbox.commit(tx).await.unwrap();
    let publisher = InMemoryPublisher::new();
    let relay = outbox
        .fast_relay(publisher.clone())
        .retention(Retention::Keep(Duration::from_secs(3600)))
        .spawn()
        .unwrap();
    eventually("published", || publisher.len() == 10).await;
    wait_for("retained rows", TIMEOUT, || async {
        outbox.published(100).await.unwrap().len() == 10
    })
    .await;
    relay.shutdown().await.unwrap();
    let kept = outbox.published(100).await.unwrap();
    assert_eq!(kept.iter().map(|m| m.id()).collect::<Vec<_>>(), ids);
    assert!(kept
        .iter()
        .all(|m| m.topic() == "kept" && m.headers()["h"] == "v"));
    assert_eq!(outbox.published(2).await.unwrap().len(), 2);
    assert_eq!(outbox.pending().await, 0);
    assert_eq!(publisher.len(), 10);

    // Backdate them past the window: the relay purges in bounded batches.
    db.backdate_published(Duration::from_secs(2 * 3600)).await;
    let relay = outbox
        .fast_relay(publisher.clone())
        .retention(Retention::Keep(Duration::from_secs(3600)))
        .stats_interval(Duration::from_millis(50))
        .spawn()
        .unwrap();
    wait_for("purged", Duration::from_secs(30), || async {
        outbox.published(1).await.unwrap().is_empty()
    })
    .await;
    relay.shutdown().await.unwrap();
    db.close().await;
}

/// `commit` through the outbox wakes a relay of the same process at once:
/// this relay neither polls nor renews its leases within the test's waits.
pub async fn commit_wakes_the_relay_without_polling<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let publisher = InMemoryPublisher::new();
    let relay = outbox
        .relay(publisher.clone())
        .poll_interval(Duration::from_secs(3600))
        .lease_ttl(Duration::from_secs(3600))
        .spawn()
        .unwrap();
    every_bucket_held::<B>(&relay, "relay running").await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    for n in 1..=2 {
        let mut tx = db.begin_hiring(n).await;
        outbox
            .enqueue(&mut tx, keyed("t", "a", n as u64))
            .await
            .unwrap();
        outbox.commit(tx).await.unwrap();
        eventually("woken by commit", || publisher.len() == n as usize).await;
    }
    relay.shutdown().await.unwrap();
    db.close().await;
}
