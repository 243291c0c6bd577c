//! Integration tests against the real local PostgreSQL. Each test gets its
//! own database, created from `OUTBOX_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped at the end.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{
    Enqueued, Error, Event, FnPublisher, InMemoryPublisher, MessageId, NewMessage, OrderingPolicy,
    OutboxMessage, PgOutbox, PublishError, Relay, RelayHandle, Retention, RetryPolicy, WakeUp,
};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;

mod support;

use support::pg::TestDb;

async fn setup() -> (TestDb, PgOutbox) {
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.expect("migrate");
    sqlx::query("CREATE TABLE candidates (id bigint PRIMARY KEY, status text NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    (db, outbox)
}

/// Waits (real time, bounded) until `cond` holds.
async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn pending(outbox: &PgOutbox) -> i64 {
    outbox.pending_count().await.unwrap()
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

#[derive(Serialize)]
struct CandidateHired {
    candidate_id: i64,
}

impl Event for CandidateHired {
    const EVENT_TYPE: &'static str = "CandidateHired";
    const SCHEMA_VERSION: i32 = 3;
    fn topic(&self) -> std::borrow::Cow<'_, str> {
        "recruiting.candidates".into()
    }
    fn partition_key(&self) -> Option<String> {
        Some(format!("candidate-{}", self.candidate_id))
    }
}

#[tokio::test]
async fn rollback_leaves_no_message_and_commit_publishes_once() {
    let (db, outbox) = setup().await;
    // Rolled back: neither the change nor the event exists.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO candidates VALUES (1, 'hired')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let rolled_back = outbox
        .publish_event(&mut *tx, &CandidateHired { candidate_id: 1 })
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(pending(&outbox).await, 0);

    // Committed: the change and its event together.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO candidates VALUES (2, 'hired')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let committed = outbox
        .publish_event(&mut *tx, &CandidateHired { candidate_id: 2 })
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    assert_eq!(pending(&outbox).await, 1);

    let publisher = InMemoryPublisher::new();
    let relay = fast_relay(&outbox, publisher.clone()).spawn().unwrap();
    eventually("one message published", || publisher.len() == 1).await;
    let p = publisher.clone();
    eventually("outbox drained", || p.len() == 1).await;
    relay.shutdown().await.unwrap();
    let got = publisher.messages();
    assert_eq!(got.len(), 1, "published exactly once");
    let m = &got[0];
    assert_eq!(m.id(), committed.id());
    assert_ne!(m.id(), rolled_back.id());
    assert_eq!(m.topic(), "recruiting.candidates");
    assert_eq!(m.event_type(), "CandidateHired");
    assert_eq!(m.schema_version(), 3);
    assert_eq!(m.partition_key(), Some("candidate-2"));
    assert_eq!(m.attempt(), 1);
    assert_eq!(
        m.payload_json::<serde_json::Value>().unwrap(),
        serde_json::json!({"candidate_id": 2})
    );
    assert_eq!(pending(&outbox).await, 0, "published rows are deleted");
    db.drop().await;
}

#[tokio::test]
async fn headers_raw_bytes_and_batch_order_survive_the_trip() {
    let (db, outbox) = setup().await;
    let mut tx = db.pool.begin().await.unwrap();
    let raw = NewMessage::bytes("files", vec![0u8, 159, 146, 150])
        .with_header("traceparent", "00-abc-def-01")
        .with_content_type("application/x-thing");
    outbox.enqueue(&mut *tx, raw.clone()).await.unwrap();
    let batch: Vec<_> = (0..300).map(|n| msg("t", "k", n)).collect();
    let ids: Vec<_> = batch.iter().map(|m| m.id()).collect();
    let r = outbox.enqueue_batch(&mut *tx, batch).await.unwrap();
    assert_eq!(r.inserted, ids);
    assert!(r.duplicates.is_empty());
    outbox.commit(tx).await.unwrap();

    let publisher = InMemoryPublisher::new();
    let relay = fast_relay(&outbox, publisher.clone()).spawn().unwrap();
    eventually("all published", || publisher.len() == 301).await;
    relay.shutdown().await.unwrap();
    let got = publisher.messages();
    let first = got.iter().find(|m| m.id() == raw.id()).unwrap();
    assert_eq!(first.payload(), &[0u8, 159, 146, 150]);
    assert_eq!(first.content_type(), "application/x-thing");
    assert_eq!(
        first.headers().get("traceparent").map(String::as_str),
        Some("00-abc-def-01")
    );
    let order: Vec<_> = got
        .iter()
        .filter(|m| m.topic() == "t")
        .map(|m| m.id())
        .collect();
    assert_eq!(order, ids, "one key: published in enqueue order");
    db.drop().await;
}

#[tokio::test]
async fn duplicate_id_is_reported_and_the_transaction_stays_usable() {
    let (db, outbox) = setup().await;
    let id = MessageId::new();
    let mut tx = db.pool.begin().await.unwrap();
    let first = outbox
        .enqueue(&mut *tx, msg("t", "k", 1).with_id(id))
        .await
        .unwrap();
    assert_eq!(first, Enqueued::Inserted(id));
    let again = outbox
        .enqueue(&mut *tx, msg("t", "k", 2).with_id(id))
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Duplicate(id));
    // The transaction is not aborted by the duplicate.
    sqlx::query("INSERT INTO candidates VALUES (7, 'applied')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let other = MessageId::new();
    let batch = outbox
        .enqueue_batch(
            &mut *tx,
            vec![
                msg("t", "k", 3).with_id(other),
                msg("t", "k", 4).with_id(id),
                msg("t", "k", 5).with_id(other),
            ],
        )
        .await
        .unwrap();
    assert_eq!(batch.inserted, vec![other]);
    assert_eq!(batch.duplicates, vec![id, other]);
    tx.commit().await.unwrap();
    assert_eq!(pending(&outbox).await, 2);

    // A producer retrying after a lost commit acknowledgement, from
    // another transaction, is told the same.
    let again = outbox.enqueue(&db.pool, msg("t", "k", 9).with_id(id)).await;
    assert!(again.unwrap().is_duplicate());
    assert_eq!(pending(&outbox).await, 2);
    db.drop().await;
}

#[tokio::test]
async fn payload_that_cannot_serialize_is_an_error_before_any_write() {
    let (db, outbox) = setup().await;
    // JSON object keys must be strings: a map keyed by tuples cannot encode.
    let mut bad = HashMap::new();
    bad.insert((1, 2), "x");
    let err = NewMessage::json("t", &bad).unwrap_err();
    assert!(matches!(err, Error::Serialize(_)), "{err:?}");

    #[derive(Serialize)]
    struct Bad {
        map: HashMap<(i32, i32), i32>,
    }
    impl Event for Bad {
        const EVENT_TYPE: &'static str = "Bad";
        fn topic(&self) -> std::borrow::Cow<'_, str> {
            "t".into()
        }
    }
    let mut map = HashMap::new();
    map.insert((1, 1), 1);
    let mut tx = db.pool.begin().await.unwrap();
    let err = outbox
        .publish_event(&mut *tx, &Bad { map })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Serialize(_)), "{err:?}");
    // Invalid messages are typed errors too, and the transaction lives on.
    let err = outbox
        .enqueue(&mut *tx, NewMessage::bytes("", vec![1]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidMessage(_)), "{err:?}");
    let err = outbox
        .enqueue(&mut *tx, msg("t", "k\0", 1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("partition key"), "{err}");
    outbox.enqueue(&mut *tx, msg("t", "k", 1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(pending(&outbox).await, 1);
    db.drop().await;
}

#[tokio::test]
async fn bad_names_and_bad_configuration_are_typed_errors() {
    let db = TestDb::new().await;
    for (schema, prefix) in [
        ("bad-schema", ""),
        ("outbox\"; DROP TABLE x; --", ""),
        ("Outbox", ""),
        ("1outbox", ""),
        ("", ""),
        ("outbox", "pre fix"),
        ("outbox", &"p".repeat(60)),
    ] {
        let err = PgOutbox::builder(db.pool.clone())
            .schema(schema)
            .table_prefix(prefix)
            .build()
            .unwrap_err();
        match err {
            Error::InvalidIdentifier { what, value, .. } => {
                assert!(value == schema || value == prefix, "{value}");
                assert!(what == "schema" || what == "table prefix");
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

    let outbox = PgOutbox::new(db.pool.clone());
    let bad: Vec<(&str, outbox::RelayBuilder)> = vec![
        (
            "batch_size",
            Relay::builder(outbox.clone(), InMemoryPublisher::new()).batch_size(0),
        ),
        (
            "poll_interval",
            Relay::builder(outbox.clone(), InMemoryPublisher::new()).poll_interval(Duration::ZERO),
        ),
        (
            "lease_ttl",
            Relay::builder(outbox.clone(), InMemoryPublisher::new())
                .lease_ttl(Duration::from_millis(1)),
        ),
        (
            "retry.max_attempts",
            Relay::builder(outbox.clone(), InMemoryPublisher::new())
                .retry(RetryPolicy::new().max_attempts(0)),
        ),
        (
            "retention",
            Relay::builder(outbox.clone(), InMemoryPublisher::new())
                .retention(Retention::Keep(Duration::ZERO)),
        ),
    ];
    for (field, builder) in bad {
        match builder.spawn().unwrap_err() {
            Error::InvalidConfig { field: f, .. } => assert_eq!(f, field),
            other => panic!("expected InvalidConfig for {field}, got {other:?}"),
        }
    }
    db.drop().await;
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
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'events' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        tables.contains(&"billing_messages".to_owned()),
        "{tables:?}"
    );
    assert!(tables.contains(&"crm_messages".to_owned()), "{tables:?}");

    // The migration sets aggressive per-table autovacuum.
    let opts: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(reloptions) FROM pg_class WHERE oid = 'events.billing_messages'::regclass",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        opts.contains(&"autovacuum_vacuum_scale_factor=0".to_owned()),
        "{opts:?}"
    );
    assert!(
        opts.contains(&"autovacuum_vacuum_cost_delay=0".to_owned()),
        "{opts:?}"
    );

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

/// Fails the test process if not dropped within `limit` of real time.
fn real_time_watchdog(what: &'static str, limit: Duration) -> impl Drop {
    struct Guard(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, AtomicOrdering::SeqCst);
        }
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if flag.load(AtomicOrdering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("timed out waiting for: {what}");
        std::process::exit(1);
    });
    Guard(done)
}

/// Records the (virtual) time of every attempt.
fn flaky_publisher(
    failures_per_message: usize,
    log: Arc<Mutex<Vec<(MessageId, tokio::time::Instant)>>>,
    published: InMemoryPublisher,
) -> impl outbox::Publisher {
    let seen: Arc<Mutex<HashMap<MessageId, usize>>> = Arc::default();
    FnPublisher::new(move |m: OutboxMessage| {
        let log = log.clone();
        let seen = seen.clone();
        let published = published.clone();
        async move {
            log.lock()
                .unwrap()
                .push((m.id(), tokio::time::Instant::now()));
            let n = {
                let mut s = seen.lock().unwrap();
                let e = s.entry(m.id()).or_insert(0);
                *e += 1;
                *e
            };
            if n <= failures_per_message {
                return Err(PublishError::transient(std::io::Error::other(format!(
                    "broker unavailable (attempt {n})"
                ))));
            }
            use outbox::Publisher as _;
            published.publish(std::slice::from_ref(&m)).await.remove(0)
        }
    })
}

#[tokio::test]
async fn transient_failures_are_retried_with_exponential_backoff() {
    // Paused time: the relay's backoff runs on tokio's clock, so 70 virtual
    // seconds of backoff pass without real sleeps. Time is paused once the
    // pool's connections are open, and the pool must never time out while
    // time jumps, hence no timeouts and no pings.
    let db = TestDb::with_options(
        PgPoolOptions::new()
            .max_connections(10)
            .min_connections(4)
            .acquire_timeout(Duration::from_secs(365 * 24 * 3600))
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false),
    )
    .await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    let ok = outbox.enqueue(&db.pool, msg("t", "k", 1)).await.unwrap();
    tokio::time::pause();
    // A later message of the same key must wait behind the failing one.
    let later = outbox.enqueue(&db.pool, msg("t", "k", 2)).await.unwrap();

    let log = Arc::new(Mutex::new(Vec::new()));
    let published = InMemoryPublisher::new();
    let mut arrivals = published.channel();
    let relay = Relay::builder(
        outbox.clone(),
        flaky_publisher(3, log.clone(), published.clone()),
    )
    .retry(
        RetryPolicy::new()
            .initial_delay(Duration::from_secs(10))
            .multiplier(2.0)
            .max_delay(Duration::from_secs(60))
            .jitter(false),
    )
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
    let attempts: Vec<_> = log.iter().filter(|(id, _)| *id == ok.id()).collect();
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
    let got: Vec<_> = published.messages().iter().map(|m| m.id()).collect();
    assert_eq!(
        got,
        vec![ok.id(), later.id()],
        "key order kept across retries"
    );
    assert_eq!(published.messages()[0].attempt(), 4);
    db.drop().await;
}

#[tokio::test]
async fn permanent_failure_is_dead_lettered_then_replayed() {
    let (db, outbox) = setup().await;
    let poison = outbox
        .enqueue(&db.pool, msg("t", "k", 1))
        .await
        .unwrap()
        .id();
    let behind = outbox
        .enqueue(&db.pool, msg("t", "k", 2))
        .await
        .unwrap()
        .id();
    let other_key = outbox
        .enqueue(&db.pool, msg("t", "j", 1))
        .await
        .unwrap()
        .id();

    let reject = Arc::new(Mutex::new(true));
    let published = InMemoryPublisher::new();
    let publisher = {
        let reject = reject.clone();
        let published = published.clone();
        FnPublisher::new(move |m: OutboxMessage| {
            let reject = *reject.lock().unwrap();
            let published = published.clone();
            async move {
                if reject && m.id() == poison {
                    return Err(PublishError::permanent(std::io::Error::other(
                        "schema rejected by broker",
                    )));
                }
                use outbox::Publisher as _;
                published.publish(std::slice::from_ref(&m)).await.remove(0)
            }
        })
    };
    let relay = fast_relay(&outbox, publisher).spawn().unwrap();
    eventually("other key flows", || {
        published.messages().iter().any(|m| m.id() == other_key)
    })
    .await;
    let dead = loop {
        let d = outbox.dead_letters(10).await.unwrap();
        if !d.is_empty() {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id(), poison);
    assert_eq!(dead[0].attempts, 1, "permanent: no retry");
    assert!(
        dead[0].last_error.contains("schema rejected by broker"),
        "{}",
        dead[0].last_error
    );
    // Ordered policy: the key stays blocked behind its dead letter.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!published.messages().iter().any(|m| m.id() == behind));
    assert_eq!(pending(&outbox).await, 1);

    *reject.lock().unwrap() = false;
    outbox.replay_dead_letter(poison).await.unwrap();
    eventually("replayed and unblocked", || published.len() == 3).await;
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
    db.drop().await;
}

#[tokio::test]
async fn unordered_topic_parks_the_failure_and_the_key_moves_on() {
    let (db, outbox) = setup().await;
    let poison = outbox
        .enqueue(&db.pool, msg("metrics", "k", 1))
        .await
        .unwrap()
        .id();
    let behind = outbox
        .enqueue(&db.pool, msg("metrics", "k", 2))
        .await
        .unwrap()
        .id();
    let published = InMemoryPublisher::new();
    let p2 = published.clone();
    let publisher = FnPublisher::new(move |m: OutboxMessage| {
        let published = p2.clone();
        async move {
            if m.id() == poison {
                return Err(PublishError::transient(std::io::Error::other("down")));
            }
            use outbox::Publisher as _;
            published.publish(std::slice::from_ref(&m)).await.remove(0)
        }
    });
    let relay = fast_relay(&outbox, publisher)
        .topic_ordering("metrics", OrderingPolicy::Unordered)
        .retry(
            RetryPolicy::new()
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(20))
                .max_attempts(3),
        )
        .spawn()
        .unwrap();
    eventually("later message of the key published", || {
        published.messages().iter().any(|m| m.id() == behind)
    })
    .await;
    let dead = loop {
        let d = outbox.dead_letters(10).await.unwrap();
        if !d.is_empty() {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    relay.shutdown().await.unwrap();
    assert_eq!(dead[0].id(), poison);
    assert_eq!(dead[0].attempts, 3, "dead after max attempts");
    assert_eq!(pending(&outbox).await, 0);
    db.drop().await;
}

#[tokio::test]
async fn several_relays_never_publish_twice_and_keep_key_order() {
    let (db, outbox) = setup().await;
    let publisher = InMemoryPublisher::new();
    let relays: Vec<RelayHandle> = (0..4)
        .map(|_| {
            fast_relay(&outbox, publisher.clone())
                .batch_size(100)
                .spawn()
                .unwrap()
        })
        .collect();
    // 8 writers, 5,000 messages over 50 keys, interleaved; every fifth
    // transaction rolls back.
    let total = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let outbox = outbox.clone();
        let pool = db.pool.clone();
        let total = total.clone();
        writers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..125u64 {
                let mut tx = pool.begin().await.unwrap();
                let mut ids = Vec::new();
                for j in 0..5u64 {
                    let key = format!("key-{}", (w * 7 + i * 3 + j) % 50);
                    let m = msg("t", &key, w * 1_000_000 + i * 10 + j);
                    ids.push(m.id());
                    outbox.enqueue(&mut *tx, m).await.unwrap();
                }
                if i % 5 == 4 {
                    tx.rollback().await.unwrap();
                } else {
                    outbox.commit(tx).await.unwrap();
                    total.fetch_add(ids.len(), AtomicOrdering::SeqCst);
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
    assert!(n >= 600);
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
    db.drop().await;
}

#[tokio::test]
async fn several_relays_share_thousands_without_duplicates() {
    let (db, outbox) = setup().await;
    let mut tx = db.pool.begin().await.unwrap();
    let batch: Vec<_> = (0..5000u64)
        .map(|i| msg("t", &format!("k{}", i % 300), i))
        .collect();
    outbox.enqueue_batch(&mut *tx, batch).await.unwrap();
    tx.commit().await.unwrap();
    let publisher = InMemoryPublisher::new();
    let relays: Vec<RelayHandle> = (0..3)
        .map(|_| {
            fast_relay(&outbox, publisher.clone())
                .batch_size(50)
                .spawn()
                .unwrap()
        })
        .collect();
    eventually("all 5000 published", || publisher.len() >= 5000).await;
    for r in relays {
        r.shutdown().await.unwrap();
    }
    let ids: HashSet<_> = publisher.messages().iter().map(|m| m.id()).collect();
    assert_eq!(ids.len(), 5000);
    assert_eq!(publisher.len(), 5000, "no duplicates in a failure-free run");
    db.drop().await;
}

#[tokio::test]
async fn shutdown_during_a_batch_loses_nothing() {
    let (db, outbox) = setup().await;
    let all: Vec<_> = (0..200u64).map(|i| msg("t", &format!("k{i}"), i)).collect();
    let ids: HashSet<_> = all.iter().map(|m| m.id()).collect();
    outbox.enqueue_batch(&db.pool, all).await.unwrap();

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
                use outbox::Publisher as _;
                published.publish(std::slice::from_ref(&m)).await.remove(0)
            }
        })
    };
    let relay = fast_relay(&outbox, publisher)
        .batch_size(50)
        .spawn()
        .unwrap();
    entered.notified().await; // a batch is in flight
    let stopping = tokio::spawn(relay.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!stopping.is_finished(), "shutdown waits for the batch");
    gate.add_permits(10_000);
    stopping.await.unwrap().unwrap();
    let first = published.len();
    assert_eq!(
        first, 50,
        "the in-flight batch finished, no new one started"
    );
    assert_eq!(pending(&outbox).await, 150, "its acknowledgement committed");

    let relay = fast_relay(&outbox, published.clone()).spawn().unwrap();
    eventually("the rest published", || published.len() >= 200).await;
    relay.shutdown().await.unwrap();
    let got: HashSet<_> = published.messages().iter().map(|m| m.id()).collect();
    assert_eq!(got, ids);
    assert_eq!(published.len(), 200);
    db.drop().await;
}

/// A relay that neither polls nor renews its leases (every lease_ttl / 3)
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
    eventually("relay running", || relay.health().leased_buckets > 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    relay
}

#[tokio::test]
async fn commit_wakes_the_relay_without_polling() {
    let (db, outbox) = setup().await;
    let publisher = InMemoryPublisher::new();
    let relay = relay_woken_only_by_wake_ups(&outbox, &publisher).await;

    // Same process: the in-process signal.
    let tx = {
        let mut tx = db.pool.begin().await.unwrap();
        outbox.enqueue(&mut *tx, msg("t", "a", 1)).await.unwrap();
        tx
    };
    outbox.commit(tx).await.unwrap();
    eventually("woken by commit", || publisher.len() == 1).await;

    // Another "process": a second outbox on its own pool, so only the
    // NOTIFY sent after its commit can reach the relay.
    let other_pool = PgPoolOptions::new()
        .connect_with(db.pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let producer = PgOutbox::new(other_pool.clone());
    let mut tx = other_pool.begin().await.unwrap();
    producer.enqueue(&mut *tx, msg("t", "b", 1)).await.unwrap();
    producer.commit(tx).await.unwrap();
    eventually("woken by NOTIFY after commit", || publisher.len() == 2).await;

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
        publisher.len() == 4
    })
    .await;
    relay.shutdown().await.unwrap();
    other_pool.close().await;
    db.drop().await;
}

/// The default wake-up without a transaction of its own under load: an
/// enqueue carries a `pg_notify` in its transaction at most once per
/// interval, and `PgOutbox::commit` sends one of its own only for a commit
/// that no later carried notification covered.
#[tokio::test]
async fn carried_notifications_wake_relays_in_other_processes() {
    let (db, outbox) = setup().await;
    let publisher = InMemoryPublisher::new();
    let relay = relay_woken_only_by_wake_ups(&outbox, &publisher).await;

    // The producer has a pool of its own: only a notification through
    // PostgreSQL can reach the relay.
    let other_pool = PgPoolOptions::new()
        .connect_with(db.pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let producer = PgOutbox::builder(other_pool.clone())
        .notify_interval(Duration::from_millis(300))
        .build()
        .unwrap();
    let enqueue = |key: &'static str| {
        let producer = producer.clone();
        let pool = other_pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            producer.enqueue(&mut *tx, msg("t", key, 1)).await.unwrap();
            tx
        }
    };

    // The first enqueue carries one: a plain commit wakes the relay.
    enqueue("a").await.commit().await.unwrap();
    eventually("woken by the carried notification", || publisher.len() == 1).await;

    // Within the interval, an enqueue carries none: PgOutbox::commit sends
    // a NOTIFY of its own once no later enqueue covered the commit.
    producer.commit(enqueue("b").await).await.unwrap();
    eventually("woken by the NOTIFY after the commit", || {
        publisher.len() == 2
    })
    .await;

    // A plain commit that carried nothing waits for the next carried
    // notification, which covers it.
    let uncovered = enqueue("c").await;
    uncovered.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    enqueue("d").await.commit().await.unwrap();
    eventually("both woken by the later carried notification", || {
        publisher.len() == 4
    })
    .await;
    let keys: HashSet<String> = publisher
        .messages()
        .iter()
        .filter_map(|m| m.partition_key().map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), 4);

    relay.shutdown().await.unwrap();
    other_pool.close().await;
    db.drop().await;
}

#[tokio::test]
async fn retention_keeps_published_rows_then_purges_them() {
    let (db, outbox) = setup().await;
    let ids: Vec<_> = {
        let batch: Vec<_> = (0..10u64).map(|i| msg("t", "k", i)).collect();
        let ids = batch.iter().map(|m| m.id()).collect();
        outbox.enqueue_batch(&db.pool, batch).await.unwrap();
        ids
    };
    let publisher = InMemoryPublisher::new();
    let relay = fast_relay(&outbox, publisher.clone())
        .retention(Retention::Keep(Duration::from_secs(3600)))
        .spawn()
        .unwrap();
    eventually("published", || publisher.len() == 10).await;
    relay.shutdown().await.unwrap();
    let kept: Vec<_> = outbox
        .published(100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id())
        .collect();
    assert_eq!(kept, ids);
    assert_eq!(pending(&outbox).await, 0);

    // Backdate them past the window: the relay purges in bounded batches.
    sqlx::query("UPDATE outbox.published SET published_at = now() - interval '2 hours'")
        .execute(&db.pool)
        .await
        .unwrap();
    let relay = fast_relay(&outbox, publisher.clone())
        .retention(Retention::Keep(Duration::from_secs(3600)))
        .stats_interval(Duration::from_millis(50))
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !outbox.published(1).await.unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "not purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await.unwrap();
    db.drop().await;
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
