//! Delta exports: a replica built only from exported pages equals the
//! source, with concurrent writers whose transactions commit out of
//! position order, with crashes between reading a page and committing its
//! cursor, and when a consumer starts from a snapshot.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use outbox::change::Change;
use outbox::export::Cursor;
use outbox::PgOutbox;
use proptest::prelude::*;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::Connection;
use support::pg::TestDb;
use support::sqlite::TempDb;

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        o => o.clone(),
    }
}

/// A document that varies in nested fields, arrays and nulls.
fn doc(seed: u32) -> Value {
    let mut rng = fastrand::Rng::with_seed(u64::from(seed));
    let mut m = serde_json::Map::new();
    m.insert("name".into(), json!(format!("cand-{}", rng.u8(0..5))));
    if rng.bool() {
        let status = ["applied", "interviewing", "hired"][rng.usize(0..3)];
        m.insert("status".into(), json!(status));
    }
    let city = ["London", "Paris"][rng.usize(0..2)];
    m.insert("address".into(), json!({"city": city, "zip": rng.u8(0..3)}));
    m.insert(
        "tags".into(),
        json!((0..rng.usize(0..3)).map(|i| i * 2).collect::<Vec<_>>()),
    );
    m.insert(
        "phone".into(),
        if rng.bool() {
            Value::Null
        } else {
            json!("555")
        },
    );
    Value::Object(m)
}

/// One writer transaction: change the source row and log the change, or
/// roll both back.
async fn write_op(
    conn: &mut sqlx::PgConnection,
    outbox: &PgOutbox,
    key: String,
    intent: u8,
    seed: u32,
    pause: u8,
) {
    let mut tx = conn.begin().await.unwrap();
    let cur: Option<String> =
        sqlx::query_scalar("SELECT doc::text FROM source WHERE key = $1 FOR UPDATE")
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await
            .unwrap();
    let change = match cur {
        None => {
            let d = doc(seed);
            let done = sqlx::query(
                "INSERT INTO source (key, doc) VALUES ($1, $2::jsonb) ON CONFLICT DO NOTHING",
            )
            .bind(&key)
            .bind(d.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
            if done.rows_affected() == 0 {
                return; // inserted concurrently: drop this one
            }
            Some(Change::insert("candidate", key.clone(), &d).unwrap())
        }
        Some(_) if intent == 0 => {
            sqlx::query("DELETE FROM source WHERE key = $1")
                .bind(&key)
                .execute(&mut *tx)
                .await
                .unwrap();
            Some(Change::delete("candidate", key.clone()))
        }
        Some(cur) => {
            let before: Value = serde_json::from_str(&cur).unwrap();
            let after = doc(seed);
            sqlx::query("UPDATE source SET doc = $2::jsonb WHERE key = $1")
                .bind(&key)
                .bind(after.to_string())
                .execute(&mut *tx)
                .await
                .unwrap();
            Change::update("candidate", key.clone(), &before, &after).unwrap()
        }
    };
    if let Some(c) = &change {
        // Into the change log and, as a message, into the outbox.
        outbox
            .record_change(&mut tx, "candidates", c)
            .await
            .unwrap();
    }
    // Hold some transactions open so commits land out of position order.
    if pause > 5 {
        tokio::time::sleep(Duration::from_millis(u64::from(pause - 5))).await;
    }
    if intent == 5 {
        tx.rollback().await.unwrap();
    } else {
        tx.commit().await.unwrap();
    }
}

async fn source_rows(pool: &sqlx::PgPool) -> HashMap<String, Value> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT key, doc::text FROM source")
        .fetch_all(pool)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(k, d)| (k, strip_nulls(&serde_json::from_str(&d).unwrap())))
        .collect()
}

fn apply_page(replica: &mut HashMap<String, Value>, page: &outbox::export::ChangePage) {
    for c in page.changes() {
        let c = c.change();
        let mut e = replica.remove(c.key());
        c.apply_to(&mut e);
        if let Some(v) = e {
            replica.insert(c.key().to_owned(), strip_nulls(&v));
        }
    }
}

fn is_fresh_generation(c: &Cursor) -> bool {
    let s = c.to_string();
    s == "start" || s.split('|').nth(2) == Some("")
}

/// Pulls pages for `consumer` until the log is drained as of a snapshot
/// taken after `done` was set; with `crash_every`, it sometimes "crashes"
/// after applying a page and before committing its cursor.
async fn pull_until_drained(
    outbox: &PgOutbox,
    consumer: &str,
    replica: &mut HashMap<String, Value>,
    writers_done: &std::sync::atomic::AtomicBool,
    rng: &mut fastrand::Rng,
) -> (usize, usize) {
    let (mut pages, mut crashes) = (0, 0);
    loop {
        let finished = writers_done.load(std::sync::atomic::Ordering::SeqCst);
        let stored = outbox
            .cursor(consumer)
            .await
            .unwrap()
            .unwrap_or_else(Cursor::beginning);
        let fresh = is_fresh_generation(&stored);
        let page = outbox
            .changes_since(consumer, rng.i64(1..40))
            .await
            .unwrap();
        pages += 1;
        apply_page(replica, &page);
        if rng.u8(0..5) == 0 {
            crashes += 1; // applied, cursor not committed: read it again
            continue;
        }
        outbox
            .commit_cursor(consumer, page.next_cursor())
            .await
            .unwrap();
        if finished && fresh && page.read() == 0 {
            return (pages, crashes);
        }
        if page.read() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A database for concurrent writers and consumers: a migrated outbox and
/// the `source` table the writers change.
async fn source_db() -> (TestDb, PgOutbox) {
    let db = TestDb::with_options(PgPoolOptions::new().max_connections(16)).await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    sqlx::query("CREATE TABLE source (key text PRIMARY KEY, doc jsonb NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    (db, outbox)
}

async fn concurrent_case(ops: Vec<(u16, u8, u32, u8)>, seed: u64) {
    let (db, outbox) = source_db().await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Eight writers share the keys.
    let mut writers = Vec::new();
    for w in 0..8 {
        let mine: Vec<_> = ops
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 8 == w)
            .map(|(_, o)| *o)
            .collect();
        let pool = db.pool.clone();
        let outbox = outbox.clone();
        writers.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            for (key, intent, seed, pause) in mine {
                write_op(&mut conn, &outbox, format!("k{key}"), intent, seed, pause).await;
            }
        }));
    }
    // The consumer pulls while the writers write.
    let consumer = {
        let outbox = outbox.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut replica = HashMap::new();
            let mut rng = fastrand::Rng::with_seed(seed);
            let stats = pull_until_drained(&outbox, "replica", &mut replica, &done, &mut rng).await;
            (replica, stats)
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (replica, (pages, crashes)) = consumer.await.unwrap();
    let source = source_rows(&db.pool).await;
    assert_eq!(replica.len(), source.len());
    for (k, v) in &source {
        assert_eq!(replica.get(k), Some(v), "entity {k}");
    }
    eprintln!(
        "{} ops, {} entities, {pages} pages, {crashes} crashes before commit",
        ops.len(),
        source.len()
    );
    db.drop().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random inserts, updates and deletes over a few hundred keys by
    /// concurrent writers; a replica built only from exported, coalesced
    /// pages (re-read after simulated crashes) equals the source.
    #[test]
    fn replica_from_pages_equals_source(
        ops in prop::collection::vec((0u16..200, 0u8..6, any::<u32>(), 0u8..9), 400..700),
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(concurrent_case(ops, seed));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_starts_from_a_snapshot_without_missing_or_repeating() {
    let (db, outbox) = source_db().await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6u32 {
        let pool = db.pool.clone();
        let outbox = outbox.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(u64::from(w));
            let mut conn = pool.acquire().await.unwrap();
            for _ in 0..150 {
                write_op(
                    &mut conn,
                    &outbox,
                    format!("k{}", rng.u8(0..80)),
                    rng.u8(0..6),
                    rng.u32(..),
                    rng.u8(0..9),
                )
                .await;
            }
        }));
    }
    // Several consumers join while the writers work.
    let mut joins = Vec::new();
    for c in 0..3u64 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let pool = db.pool.clone();
        let outbox = outbox.clone();
        let done = done.clone();
        joins.push(tokio::spawn(async move {
            let consumer = format!("late-{c}");
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await
                .unwrap();
            let rows: Vec<(String, String)> = sqlx::query_as("SELECT key, doc::text FROM source")
                .fetch_all(&mut *tx)
                .await
                .unwrap();
            let cursor = outbox.snapshot_cursor(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            let mut replica: HashMap<String, Value> = rows
                .into_iter()
                .map(|(k, d)| (k, strip_nulls(&serde_json::from_str(&d).unwrap())))
                .collect();
            outbox.commit_cursor(&consumer, &cursor).await.unwrap();
            let mut rng = fastrand::Rng::with_seed(c);
            pull_until_drained(&outbox, &consumer, &mut replica, &done, &mut rng).await;
            replica
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let source = source_rows(&db.pool).await;
    for j in joins {
        let replica = j.await.unwrap();
        assert_eq!(replica, source);
    }
    db.drop().await;
}

/// The keys of a page's changes, in order.
fn keys_of(page: &outbox::export::ChangePage) -> Vec<String> {
    page.changes()
        .iter()
        .map(|c| c.change().key().to_owned())
        .collect()
}

#[tokio::test]
async fn a_late_commit_is_exported_later_not_skipped() {
    // The classic gap: T1 takes a position, T2 takes a later one and
    // commits first; a reader that moves past T2's position must still get
    // T1's change once it commits.
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    let mut t1 = db.pool.begin().await.unwrap();
    outbox
        .log_change(
            &mut *t1,
            &Change::insert("c", "early", &json!({"a": 1})).unwrap(),
        )
        .await
        .unwrap();
    let mut t2 = db.pool.begin().await.unwrap();
    outbox
        .log_change(
            &mut *t2,
            &Change::insert("c", "late", &json!({"a": 2})).unwrap(),
        )
        .await
        .unwrap();
    t2.commit().await.unwrap();

    let page = outbox.changes_since("r", 100).await.unwrap();
    assert_eq!(keys_of(&page), vec!["late"]);
    outbox.commit_cursor("r", page.next_cursor()).await.unwrap();
    let page = outbox.changes_since("r", 100).await.unwrap();
    assert!(page.changes().is_empty());
    outbox.commit_cursor("r", page.next_cursor()).await.unwrap();

    t1.commit().await.unwrap();
    let page = outbox.changes_since("r", 100).await.unwrap();
    assert_eq!(
        keys_of(&page),
        vec!["early"],
        "the late commit is read, not skipped"
    );
    db.drop().await;
}

#[tokio::test]
async fn bad_cursors_are_typed_errors() {
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    assert!(matches!(
        "pg1|1:2:;DROP TABLE x|1:2:|0".parse::<Cursor>(),
        Err(outbox::Error::InvalidCursor(_))
    ));
    let sqlite_cursor: Cursor = "sq1|5".parse().unwrap();
    assert!(matches!(
        outbox.changes_after(&sqlite_cursor, 10).await,
        Err(outbox::Error::CursorBackendMismatch(_))
    ));
    assert!(matches!(
        outbox.changes_after(&Cursor::beginning(), 0).await,
        Err(outbox::Error::InvalidConfig { field: "limit", .. })
    ));
    db.drop().await;
}

#[tokio::test]
async fn sqlite_export_coalesces_and_resumes_from_its_cursor() {
    let db = TempDb::with_max_connections("outbox-export", 2).await;
    let outbox = db.outbox().await;
    let pool = &db.pool;
    let mut truth: HashMap<String, Value> = HashMap::new();
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..400 {
        let key = format!("k{}", rng.u8(0..20));
        let change = match truth.get(&key) {
            None => Some(Change::insert("c", key.clone(), &doc(rng.u32(..))).unwrap()),
            Some(_) if rng.u8(0..5) == 0 => Some(Change::delete("c", key.clone())),
            Some(cur) => Change::update("c", key.clone(), cur, &doc(rng.u32(..))).unwrap(),
        };
        let Some(change) = change else { continue };
        let mut tx = pool.begin().await.unwrap();
        outbox.log_change(&mut *tx, &change).await.unwrap();
        if rng.u8(0..10) == 0 {
            tx.rollback().await.unwrap();
            continue;
        }
        tx.commit().await.unwrap();
        let mut e = truth.remove(&key);
        change.apply_to(&mut e);
        if let Some(v) = e {
            truth.insert(key, strip_nulls(&v));
        }
    }
    let mut replica = HashMap::new();
    let mut coalesced = 0;
    loop {
        let page = outbox.changes_since("crm", 50).await.unwrap();
        if page.read() == 0 {
            break;
        }
        coalesced += page.read() - page.changes().len();
        apply_page(&mut replica, &page);
        if rng.bool() {
            outbox
                .commit_cursor("crm", page.next_cursor())
                .await
                .unwrap();
        } // else: crash before commit; the page is read again
    }
    assert_eq!(replica, truth);
    assert!(coalesced > 0, "pages coalesced changes of the same entity");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_fed_by_the_relay_through_an_inbox_equals_the_source() {
    use outbox::{FnPublisher, OutboxMessage, PgInbox, Receipt, Relay};

    let (db, outbox) = source_db().await;
    // The consumer's own database: its replica and its inbox.
    let consumer_db = TestDb::new().await;
    let inbox = PgInbox::new(consumer_db.pool.clone());
    inbox.migrate().await.unwrap();
    sqlx::query("CREATE TABLE replica (key text PRIMARY KEY, doc jsonb NOT NULL)")
        .execute(&consumer_db.pool)
        .await
        .unwrap();

    // A broker that delivers every message twice, and every fifth time
    // also delivers the previous message again, late.
    let (deliver, mut deliveries) = tokio::sync::mpsc::unbounded_channel::<OutboxMessage>();
    let previous: std::sync::Arc<std::sync::Mutex<Option<OutboxMessage>>> = Default::default();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = FnPublisher::new(move |m: OutboxMessage| {
        let (deliver, previous, count) = (deliver.clone(), previous.clone(), count.clone());
        async move {
            let _ = deliver.send(m.clone());
            let _ = deliver.send(m.clone());
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let old = previous.lock().unwrap().replace(m);
            if n % 5 == 4 {
                if let Some(old) = old {
                    let _ = deliver.send(old);
                }
            }
            Ok(())
        }
    });
    let relay = Relay::builder(outbox.clone(), publisher)
        .poll_interval(Duration::from_millis(20))
        .spawn()
        .unwrap();

    let consumer = {
        let (pool, inbox) = (consumer_db.pool.clone(), inbox.clone());
        tokio::spawn(async move {
            let (mut applied, mut skipped) = (0usize, 0usize);
            while let Some(m) = deliveries.recv().await {
                let mut tx = pool.begin().await.unwrap();
                if inbox.receive(&mut *tx, "replica", &m).await.unwrap() == Receipt::Duplicate {
                    skipped += 1;
                    tx.rollback().await.unwrap();
                    continue;
                }
                let change: Change = m.payload_json().unwrap();
                let cur: Option<String> =
                    sqlx::query_scalar("SELECT doc::text FROM replica WHERE key = $1 FOR UPDATE")
                        .bind(change.key())
                        .fetch_optional(&mut *tx)
                        .await
                        .unwrap();
                let mut entity = cur.map(|c| serde_json::from_str::<Value>(&c).unwrap());
                change.apply_to(&mut entity);
                match entity {
                    Some(doc) => sqlx::query(
                        "INSERT INTO replica (key, doc) VALUES ($1, $2::jsonb) \
                         ON CONFLICT (key) DO UPDATE SET doc = excluded.doc",
                    )
                    .bind(change.key())
                    .bind(doc.to_string()),
                    None => sqlx::query("DELETE FROM replica WHERE key = $1").bind(change.key()),
                }
                .execute(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
                applied += 1;
            }
            (applied, skipped)
        })
    };

    let mut writers = Vec::new();
    for w in 0..6u64 {
        let (pool, outbox) = (db.pool.clone(), outbox.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(100 + w);
            let mut conn = pool.acquire().await.unwrap();
            for _ in 0..120 {
                let (key, intent, seed, pause) = (
                    format!("k{}", rng.u8(0..60)),
                    rng.u8(0..6),
                    rng.u32(..),
                    rng.u8(0..8),
                );
                write_op(&mut conn, &outbox, key, intent, seed, pause).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    support::wait_for("the outbox drained", Duration::from_secs(60), || async {
        outbox.pending_count().await.unwrap() == 0
    })
    .await;
    relay.shutdown().await.unwrap();
    let (applied, skipped) = consumer.await.unwrap();
    let source = source_rows(&db.pool).await;
    let replica = source_rows_of(&consumer_db.pool, "replica").await;
    assert_eq!(replica, source);
    assert!(
        skipped > applied,
        "every message came at least twice: {applied} applied, {skipped} skipped"
    );
    consumer_db.drop().await;
    db.drop().await;
}

async fn source_rows_of(pool: &sqlx::PgPool, table: &str) -> HashMap<String, Value> {
    let rows: Vec<(String, String)> =
        sqlx::query_as(&format!("SELECT key, doc::text FROM {table}"))
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(k, d)| (k, strip_nulls(&serde_json::from_str(&d).unwrap())))
        .collect()
}
