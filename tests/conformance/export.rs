//! Delta exports, on every backend: a replica built only from exported
//! pages equals the source, with concurrent writers (whose transactions
//! commit out of position order where the database lets them), with
//! crashes between reading a page and committing its cursor, and when a
//! consumer starts from a snapshot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::change::{apply_patch, Change};
use outbox::export::{ChangePage, Cursor};
use outbox::{FnPublisher, OutboxMessage, Receipt};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use crate::backend::Tx;
use crate::consumer_backend::{consumer_scenarios, finish_shared, ExportBackend, InboxBackend};
use crate::support::wait_for;

consumer_scenarios! {
    pages_coalesce_and_resume_from_the_cursor,
    a_new_consumer_starts_from_a_snapshot_without_missing_or_repeating,
    // SQLite has one writer at a time: a second transaction cannot log a
    // change while the first holds one uncommitted, so positions follow
    // commit order by construction and no commit comes late.
    a_late_commit_is_exported_later_not_skipped except sqlite,
    bad_cursors_are_typed_errors,
    consumers_tell_how_far_behind_they_are,
    commit_and_read_stores_the_cursor_and_reads_the_page_after_it,
    replica_from_pages_equals_source,
    a_replica_fed_by_the_relay_through_an_inbox_equals_the_source,
}

/// Connections of a database with concurrent writers and consumers.
const CONNECTIONS: u32 = 16;

/// `v` without the nulls of its objects: as a merge patch applied to
/// nothing, where a null means "absent".
fn strip_nulls(v: &Value) -> Value {
    let mut t = Value::Object(serde_json::Map::new());
    apply_patch(&mut t, v);
    t
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
async fn write_op<B: ExportBackend>(db: &B, key: String, intent: u8, seed: u32, pause: u8) {
    let mut tx = db.begin_write().await;
    let cur = B::entity_for_update(&mut tx, "source", &key).await;
    let change = match cur {
        None => {
            let d = doc(seed);
            if !B::insert_entity(&mut tx, "source", &key, &d).await {
                return; // inserted concurrently: drop this one
            }
            Some(Change::insert("candidate", key.clone(), &d).unwrap())
        }
        Some(_) if intent == 0 => {
            B::delete_entity(&mut tx, "source", &key).await;
            Some(Change::delete("candidate", key.clone()))
        }
        Some(before) => {
            let after = doc(seed);
            B::put_entity(&mut tx, "source", &key, &after).await;
            Change::update("candidate", key.clone(), &before, &after).unwrap()
        }
    };
    if let Some(c) = &change {
        // Into the change log and, as a message, into the outbox.
        db.record_change(&mut tx, "candidates", c).await.unwrap();
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

/// The entities of `table`, without null fields.
async fn entities_of<B: ExportBackend>(db: &B, table: &str) -> HashMap<String, Value> {
    let mut tx = db.begin().await;
    let rows = B::entities(&mut tx, table).await;
    tx.commit().await.unwrap();
    rows.into_iter()
        .map(|(k, d)| (k, strip_nulls(&d)))
        .collect()
}

fn apply_page(replica: &mut HashMap<String, Value>, page: &ChangePage) {
    for c in page.changes() {
        let c = c.change();
        let mut e = replica.remove(c.key());
        c.apply_to(&mut e);
        if let Some(v) = e {
            replica.insert(c.key().to_owned(), strip_nulls(&v));
        }
    }
}

/// Pulls pages for `consumer` until a page read after `writers_done` was
/// set is caught up; it sometimes "crashes" after applying a page and
/// before committing its cursor. It commits a cursor either alone or with
/// the read of the next page (`commit_and_read`), at random.
async fn pull_until_drained<B: ExportBackend>(
    db: &B,
    consumer: &str,
    replica: &mut HashMap<String, Value>,
    writers_done: &AtomicBool,
    rng: &mut fastrand::Rng,
) -> (usize, usize) {
    let (mut pages, mut crashes) = (0, 0);
    // A page read with the last commit, and whether the writers were done
    // before it was read.
    let mut ahead: Option<(bool, ChangePage)> = None;
    loop {
        let (finished, page) = match ahead.take() {
            Some(read) => read,
            None => {
                let finished = writers_done.load(Ordering::SeqCst);
                let page = db.changes_since(consumer, rng.i64(1..40)).await.unwrap();
                (finished, page)
            }
        };
        pages += 1;
        apply_page(replica, &page);
        if rng.u8(0..5) == 0 {
            crashes += 1; // applied, cursor not committed: read it again
            continue;
        }
        if rng.bool() {
            let done = writers_done.load(Ordering::SeqCst);
            let next = db
                .commit_and_read(consumer, page.next_cursor(), rng.i64(1..40))
                .await
                .unwrap();
            ahead = Some((done, next));
        } else {
            db.commit_cursor(consumer, page.next_cursor())
                .await
                .unwrap();
        }
        assert_eq!(
            db.cursor(consumer).await.unwrap().as_ref(),
            Some(page.next_cursor()),
            "the committed cursor is stored as given"
        );
        // Every writer committed before `finished` was seen: a page caught
        // up as of its read holds the last of their changes.
        if finished && page.caught_up() {
            return (pages, crashes);
        }
        if page.read() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A database for concurrent writers and consumers: a migrated outbox and
/// the `source` table the writers change.
async fn source_db<B: ExportBackend>() -> Arc<B> {
    let db = B::bare(CONNECTIONS).await;
    db.migrate_outbox().await.unwrap();
    db.create_entity_table("source").await;
    Arc::new(db)
}

/// The keys of a page's changes, in order.
fn keys_of(page: &ChangePage) -> Vec<String> {
    page.changes()
        .iter()
        .map(|c| c.change().key().to_owned())
        .collect()
}

/// Inserts of entities `k{from}` to `k{to}` (not included), one
/// transaction each.
async fn log_inserts<B: ExportBackend>(db: &B, from: usize, to: usize) {
    for i in from..to {
        let mut tx = db.begin().await;
        let change = Change::insert("c", format!("k{i}"), &json!({"n": i})).unwrap();
        db.log_change(&mut tx, &change).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// `commit_and_read` stores the cursor it is given and returns the page
/// `changes_after` returns for that cursor: within a generation of pages
/// (PostgreSQL: one statement), at the start of a new one, and from the
/// beginning.
async fn commit_and_read_stores_the_cursor_and_reads_the_page_after_it<B: ExportBackend>() {
    let db = B::bare(2).await;
    db.migrate_outbox().await.unwrap();
    // Twenty: the second page ends on its limit, so the third, read with
    // the second's commit, holds nothing and ends the generation.
    log_inserts(&db, 0, 20).await;
    let mut page = db
        .commit_and_read("crm", &Cursor::beginning(), 10)
        .await
        .unwrap();
    assert_eq!(db.cursor("crm").await.unwrap(), Some(Cursor::beginning()));
    let mut keys = keys_of(&page);
    assert_eq!(keys.len(), 10);
    while !page.caught_up() {
        let expected = db.changes_after(page.next_cursor(), 10).await.unwrap();
        let next = db
            .commit_and_read("crm", page.next_cursor(), 10)
            .await
            .unwrap();
        assert_eq!(
            db.cursor("crm").await.unwrap().as_ref(),
            Some(page.next_cursor()),
            "the cursor given is stored"
        );
        assert_eq!(keys_of(&next), keys_of(&expected));
        assert_eq!(next.caught_up(), expected.caught_up());
        keys.extend(keys_of(&next));
        page = next;
    }
    let all: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    assert_eq!(keys, all, "every change once, in order");
    // Caught up; more changes open a new generation.
    log_inserts(&db, 20, 23).await;
    let expected = db.changes_after(page.next_cursor(), 10).await.unwrap();
    let next = db
        .commit_and_read("crm", page.next_cursor(), 10)
        .await
        .unwrap();
    assert_eq!(
        db.cursor("crm").await.unwrap().as_ref(),
        Some(page.next_cursor())
    );
    assert_eq!(keys_of(&next), vec!["k20", "k21", "k22"]);
    assert_eq!(keys_of(&expected), keys_of(&next));
    // A crash after that read: the stored cursor gives the same page.
    let again = db.changes_since("crm", 10).await.unwrap();
    assert_eq!(keys_of(&again), keys_of(&next));
    // The two cursors may differ in their text (on PostgreSQL each names
    // the snapshot its generation was opened with), not in where they
    // lead: the changes logged since come next from both.
    log_inserts(&db, 23, 25).await;
    for cursor in [next.next_cursor(), expected.next_cursor()] {
        let after = db.changes_after(cursor, 10).await.unwrap();
        assert_eq!(keys_of(&after), vec!["k23", "k24"]);
    }
    db.finish().await;
}

/// Each consumer with a cursor is listed with the changes logged after it,
/// counted up to the maximum asked for.
async fn consumers_tell_how_far_behind_they_are<B: ExportBackend>() {
    let db = B::bare(2).await;
    db.migrate_outbox().await.unwrap();
    log_inserts(&db, 0, 30).await;
    assert!(db.export_consumers(100).await.unwrap().is_empty());
    let before = chrono::Utc::now() - chrono::Duration::seconds(60);
    let page = db.changes_since("crm", 100).await.unwrap();
    assert_eq!(page.read(), 30);
    db.commit_cursor("crm", page.next_cursor()).await.unwrap();
    let page = db.changes_since("billing", 10).await.unwrap();
    db.commit_cursor("billing", page.next_cursor())
        .await
        .unwrap();

    let all = db.export_consumers(100).await.unwrap();
    let names: Vec<&str> = all.iter().map(|c| c.consumer.as_str()).collect();
    assert_eq!(names, ["billing", "crm"]);
    assert_eq!((all[0].behind, all[0].more), (20, false));
    assert_eq!((all[1].behind, all[1].more), (0, false));
    assert!(all.iter().all(|c| c.committed_at > before));
    assert_eq!(
        &all[1].cursor,
        page_cursor(&db, "crm").await.as_ref().unwrap()
    );

    let capped = db.export_consumers(5).await.unwrap();
    assert_eq!((capped[0].behind, capped[0].more), (5, true));
    log_inserts(&db, 30, 33).await;
    let all = db.export_consumers(100).await.unwrap();
    assert_eq!((all[0].behind, all[1].behind), (23, 3));
    assert!(db.export_consumers(0).await.is_err());
    db.finish().await;
}

async fn page_cursor<B: ExportBackend>(db: &B, consumer: &str) -> Option<Cursor> {
    db.cursor(consumer).await.unwrap()
}

/// One writer at a time, some transactions rolled back: a consumer that
/// sometimes crashes before committing its cursor ends with the source,
/// and pages merged changes of one entity.
async fn pages_coalesce_and_resume_from_the_cursor<B: ExportBackend>() {
    let db = B::bare(2).await;
    db.migrate_outbox().await.unwrap();
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
        let mut tx = db.begin().await;
        db.log_change(&mut tx, &change).await.unwrap();
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
        let page = db.changes_since("crm", 50).await.unwrap();
        if page.read() == 0 {
            break;
        }
        coalesced += page.read() - page.changes().len();
        apply_page(&mut replica, &page);
        if rng.bool() {
            db.commit_cursor("crm", page.next_cursor()).await.unwrap();
        } // else: crash before commit; the page is read again
    }
    assert_eq!(replica, truth);
    assert!(coalesced > 0, "pages coalesced changes of the same entity");
    db.finish().await;
}

async fn concurrent_case<B: ExportBackend>(ops: Vec<(u16, u8, u32, u8)>, seed: u64) {
    let db = source_db::<B>().await;
    let done = Arc::new(AtomicBool::new(false));
    // Eight writers share the keys.
    let mut writers = Vec::new();
    for w in 0..8 {
        let mine: Vec<_> = ops
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 8 == w)
            .map(|(_, o)| *o)
            .collect();
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            for (key, intent, seed, pause) in mine {
                write_op(&*db, format!("k{key}"), intent, seed, pause).await;
            }
        }));
    }
    // The consumer pulls while the writers write.
    let consumer = {
        let (db, done) = (db.clone(), done.clone());
        tokio::spawn(async move {
            let mut replica = HashMap::new();
            let mut rng = fastrand::Rng::with_seed(seed);
            let stats = pull_until_drained(&*db, "replica", &mut replica, &done, &mut rng).await;
            (replica, stats)
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let (replica, (pages, crashes)) = consumer.await.unwrap();
    let source = entities_of(&*db, "source").await;
    assert_eq!(replica.len(), source.len());
    for (k, v) in &source {
        assert_eq!(replica.get(k), Some(v), "entity {k}");
    }
    eprintln!(
        "{} ops, {} entities, {pages} pages, {crashes} crashes before commit",
        ops.len(),
        source.len()
    );
    finish_shared(db).await;
}

/// Random inserts, updates and deletes over a few hundred keys by
/// concurrent writers; a replica built only from exported, coalesced pages
/// (re-read after simulated crashes) equals the source. Each case runs on
/// a two-thread runtime of its own.
async fn replica_from_pages_equals_source<B: ExportBackend>() {
    let outcome = tokio::task::spawn_blocking(|| {
        let mut runner = TestRunner::new(Config {
            cases: 4,
            failure_persistence: None,
            ..Config::default()
        });
        let cases = (
            prop::collection::vec((0u16..200, 0u8..6, any::<u32>(), 0u8..9), 400..700),
            any::<u64>(),
        );
        runner
            .run(&cases, |(ops, seed)| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(concurrent_case::<B>(ops, seed));
                Ok(())
            })
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

async fn a_new_consumer_starts_from_a_snapshot_without_missing_or_repeating<B: ExportBackend>() {
    let db = source_db::<B>().await;
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6u32 {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(u64::from(w));
            for _ in 0..150 {
                write_op(
                    &*db,
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
        let (db, done) = (db.clone(), done.clone());
        joins.push(tokio::spawn(async move {
            let consumer = format!("late-{c}");
            let mut tx = db.begin_snapshot().await;
            let rows = B::entities(&mut tx, "source").await;
            let cursor = db.snapshot_cursor(&mut tx).await.unwrap();
            tx.commit().await.unwrap();
            let mut replica: HashMap<String, Value> = rows
                .into_iter()
                .map(|(k, d)| (k, strip_nulls(&d)))
                .collect();
            db.commit_cursor(&consumer, &cursor).await.unwrap();
            let mut rng = fastrand::Rng::with_seed(c);
            pull_until_drained(&*db, &consumer, &mut replica, &done, &mut rng).await;
            replica
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let source = entities_of(&*db, "source").await;
    for j in joins {
        let replica = j.await.unwrap();
        assert_eq!(replica, source);
    }
    finish_shared(db).await;
}

/// The classic gap: T1 takes a position, T2 takes a later one and commits
/// first; a reader that moves past T2's position must still get T1's
/// change once it commits.
/// A transaction that has logged the insert of entity `c`/`key`, open.
async fn begin_insert<B: ExportBackend>(db: &B, key: &str, doc: Value) -> Tx<B> {
    let mut tx = db.begin().await;
    let change = Change::insert("c", key, &doc).unwrap();
    db.log_change(&mut tx, &change).await.unwrap();
    tx
}

async fn a_late_commit_is_exported_later_not_skipped<B: ExportBackend>() {
    let db = B::bare(4).await;
    db.migrate_outbox().await.unwrap();
    let t1 = begin_insert(&db, "early", json!({"a": 1})).await;
    let t2 = begin_insert(&db, "late", json!({"a": 2})).await;
    t2.commit().await.unwrap();

    let page = db.changes_since("r", 100).await.unwrap();
    assert_eq!(keys_of(&page), vec!["late"]);
    db.commit_cursor("r", page.next_cursor()).await.unwrap();
    let page = db.changes_since("r", 100).await.unwrap();
    assert!(page.changes().is_empty());
    db.commit_cursor("r", page.next_cursor()).await.unwrap();

    t1.commit().await.unwrap();
    let page = db.changes_since("r", 100).await.unwrap();
    assert_eq!(
        keys_of(&page),
        vec!["early"],
        "the late commit is read, not skipped"
    );
    db.finish().await;
}

async fn bad_cursors_are_typed_errors<B: ExportBackend>() {
    let db = B::bare(4).await;
    db.migrate_outbox().await.unwrap();
    assert!(matches!(
        "pg1|1:2:;DROP TABLE x|1:2:|0".parse::<Cursor>(),
        Err(outbox::Error::InvalidCursor(_))
    ));
    let foreign = B::foreign_cursor();
    assert!(matches!(
        db.changes_after(&foreign, 10).await,
        Err(outbox::Error::CursorBackendMismatch(_))
    ));
    assert!(matches!(
        db.commit_cursor("r", &foreign).await,
        Err(outbox::Error::CursorBackendMismatch(_))
    ));
    assert!(matches!(
        db.changes_after(&Cursor::beginning(), 0).await,
        Err(outbox::Error::InvalidConfig { field: "limit", .. })
    ));
    assert!(matches!(
        db.commit_and_read("r", &foreign, 10).await,
        Err(outbox::Error::CursorBackendMismatch(_))
    ));
    assert!(matches!(
        db.commit_and_read("r", &Cursor::beginning(), 0).await,
        Err(outbox::Error::InvalidConfig { field: "limit", .. })
    ));
    assert_eq!(
        db.cursor("r").await.unwrap(),
        None,
        "a refused call stores nothing"
    );
    db.finish().await;
}

async fn a_replica_fed_by_the_relay_through_an_inbox_equals_the_source<
    B: ExportBackend + InboxBackend,
>() {
    let db = source_db::<B>().await;
    // The consumer's own database: its replica and its inbox.
    let consumer_db = Arc::new(B::bare(4).await);
    consumer_db.migrate_inbox().await.unwrap();
    consumer_db.create_entity_table("replica").await;

    // A broker that delivers every message twice, and every fifth time
    // also delivers the previous message again, late.
    let (deliver, mut deliveries) = tokio::sync::mpsc::unbounded_channel::<OutboxMessage>();
    let previous: Arc<Mutex<Option<OutboxMessage>>> = Default::default();
    let count = Arc::new(AtomicUsize::new(0));
    let publisher = FnPublisher::new(move |m: OutboxMessage| {
        let (deliver, previous, count) = (deliver.clone(), previous.clone(), count.clone());
        async move {
            let _ = deliver.send(m.clone());
            let _ = deliver.send(m.clone());
            let n = count.fetch_add(1, Ordering::SeqCst);
            let old = previous.lock().unwrap().replace(m);
            if n % 5 == 4 {
                if let Some(old) = old {
                    let _ = deliver.send(old);
                }
            }
            Ok(())
        }
    });
    let relay = db
        .relay(publisher)
        .poll_interval(Duration::from_millis(20))
        .spawn()
        .unwrap();

    let consumer = {
        let consumer_db = consumer_db.clone();
        tokio::spawn(async move {
            let (mut applied, mut skipped) = (0usize, 0usize);
            while let Some(m) = deliveries.recv().await {
                let mut tx = consumer_db.begin().await;
                if consumer_db.receive(&mut tx, "replica", &m).await.unwrap() == Receipt::Duplicate
                {
                    skipped += 1;
                    tx.rollback().await.unwrap();
                    continue;
                }
                let change: Change = m.payload_json().unwrap();
                let mut entity = B::entity_for_update(&mut tx, "replica", change.key()).await;
                change.apply_to(&mut entity);
                match entity {
                    Some(doc) => B::put_entity(&mut tx, "replica", change.key(), &doc).await,
                    None => B::delete_entity(&mut tx, "replica", change.key()).await,
                }
                tx.commit().await.unwrap();
                applied += 1;
            }
            (applied, skipped)
        })
    };

    let mut writers = Vec::new();
    for w in 0..6u64 {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(100 + w);
            for _ in 0..120 {
                let (key, intent, seed, pause) = (
                    format!("k{}", rng.u8(0..60)),
                    rng.u8(0..6),
                    rng.u32(..),
                    rng.u8(0..8),
                );
                write_op(&*db, key, intent, seed, pause).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    wait_for("the outbox drained", Duration::from_secs(60), || async {
        db.pending().await == 0
    })
    .await;
    relay.shutdown().await.unwrap();
    let (applied, skipped) = consumer.await.unwrap();
    let source = entities_of(&*db, "source").await;
    let replica = entities_of(&*consumer_db, "replica").await;
    assert_eq!(replica, source);
    assert!(
        skipped > applied,
        "every message came at least twice: {applied} applied, {skipped} skipped"
    );
    finish_shared(consumer_db).await;
    finish_shared(db).await;
}
