//! Per-key numbers on PostgreSQL (migration 11): acknowledgements record
//! them as rows of a log, which relays fold into `key_sequences` a few
//! dozen at a time. A relay numbering a key reads the greater of its row
//! there and its entries in the log, so numbers continue whether or not
//! the log was folded; a fold never lowers a number.
//!
//! Each test gets its own database, created from `OUTBOX_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped at the end.

use std::time::Duration;

use outbox::{InMemoryPublisher, NewMessage, PgOutbox, Relay, RelayHandle};

mod support;

use support::pg::TestDb;
use support::wait_for;

const TIMEOUT: Duration = Duration::from_secs(30);

fn msg(key: &str, n: u64) -> NewMessage {
    NewMessage::json("t", &serde_json::json!({ "key": key, "n": n }))
        .unwrap()
        .with_partition_key(key)
}

async fn enqueue(outbox: &PgOutbox, db: &TestDb, messages: Vec<NewMessage>) {
    let mut tx = db.pool.begin().await.unwrap();
    outbox.enqueue_batch(&mut *tx, messages).await.unwrap();
    outbox.commit(tx).await.unwrap();
}

/// The stored number of `key`: its row of `key_sequences`, if any.
async fn stored(db: &TestDb, key: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT last_sequence FROM outbox.key_sequences WHERE partition_key = $1")
        .bind(key)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

/// Messages not acknowledged yet.
async fn pending(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn log_rows(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox.key_sequence_log")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// A fresh database with a migrated outbox in it.
async fn migrated() -> (TestDb, PgOutbox) {
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    (db, outbox)
}

/// Writes rows into the log of key numbers as acknowledgements would (or
/// as no acknowledgement would): `rows` is the `VALUES` list of
/// `(keys, numbers)` arrays.
async fn add_to_log(db: &TestDb, rows: &str) {
    sqlx::query(&format!(
        "INSERT INTO outbox.key_sequence_log (keys, numbers) VALUES {rows}"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
}

/// Runs a numbering relay over `outbox` until the log is folded away.
async fn folded_by_a_relay(db: &TestDb, outbox: &PgOutbox) {
    let (relay, _) = numbering_relay(outbox);
    wait_for("the log folded", TIMEOUT, || async {
        log_rows(db).await == 0
    })
    .await;
    relay.shutdown().await.unwrap();
}

/// A relay numbering keys over `outbox`, and what it published.
fn numbering_relay(outbox: &PgOutbox) -> (RelayHandle, InMemoryPublisher) {
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(outbox.clone(), publisher.clone())
        .key_sequences(true)
        .poll_interval(Duration::from_millis(20))
        .spawn()
        .unwrap();
    (relay, publisher)
}

/// Publishes `messages` through a numbering relay and returns each one's
/// number, in the order given; the relay is stopped.
async fn numbered(db: &TestDb, outbox: &PgOutbox, messages: Vec<NewMessage>) -> Vec<Option<i64>> {
    let ids: Vec<_> = messages.iter().map(NewMessage::id).collect();
    let (relay, publisher) = numbering_relay(outbox);
    enqueue(outbox, db, messages).await;
    wait_for("the messages published", TIMEOUT, || async {
        publisher.messages().len() >= ids.len()
    })
    .await;
    relay.shutdown().await.unwrap();
    let published = publisher.messages();
    ids.iter()
        .map(|id| {
            published
                .iter()
                .find(|m| m.id() == *id)
                .expect("published")
                .key_sequence()
        })
        .collect()
}

/// A relay reads a key's number from the log while no fold can run (a
/// transaction holds `key_sequences` in SHARE mode), taking the greatest of a key's
/// entries; once the fold runs, `key_sequences` holds the greatest number
/// and the log is empty.
#[tokio::test]
async fn numbers_continue_from_the_log_before_it_is_folded_and_a_fold_never_lowers_one() {
    let (db, outbox) = migrated().await;

    // Numbers as a relay left them: k at 5 in the log beside an older
    // entry at 2 and a folded row at 4; j at 3 in the log only.
    sqlx::query("INSERT INTO outbox.key_sequences (partition_key, last_sequence) VALUES ('k', 4)")
        .execute(&db.pool)
        .await
        .unwrap();
    add_to_log(&db, "('{k}', '{2}'), ('{k,j}', '{5,3}')").await;

    // While a transaction holds key_sequences in SHARE mode, a fold (which
    // writes it) waits for it; reads and acknowledgements do not.
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox.key_sequences IN SHARE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let got = numbered(&db, &outbox, vec![msg("k", 1), msg("j", 1), msg("k", 2)]).await;
    assert_eq!(got, [Some(6), Some(4), Some(7)]);
    assert_eq!(stored(&db, "k").await, Some(4), "nothing folded yet");
    assert_eq!(stored(&db, "j").await, None);
    holder.rollback().await.unwrap();

    // A relay folds at each parking pass (about a second apart): the
    // greatest numbers land in the table, its own acknowledgement's too.
    let (relay, publisher) = numbering_relay(&outbox);
    enqueue(&outbox, &db, vec![msg("j", 2)]).await;
    // The acknowledgement records j's new number as a row of the log, so
    // the log is empty only once a fold ran after it landed.
    wait_for("j acknowledged and the log folded", TIMEOUT, || async {
        pending(&db).await == 0 && log_rows(&db).await == 0
    })
    .await;
    relay.shutdown().await.unwrap();
    assert_eq!(publisher.messages().len(), 1, "j published once");
    assert_eq!(publisher.messages()[0].key_sequence(), Some(5));
    assert_eq!(stored(&db, "k").await, Some(7));
    assert_eq!(stored(&db, "j").await, Some(5));

    // A lone entry below the stored number (an acknowledgement that
    // landed late) is folded without lowering it.
    add_to_log(&db, "('{k}', '{3}')").await;
    folded_by_a_relay(&db, &outbox).await;
    assert_eq!(stored(&db, "k").await, Some(7));
}

/// A numbering relay folds the log as it goes: after 300 acknowledgements,
/// far fewer rows wait (every 16 acknowledgements start a fold; parking
/// passes, a second apart, fold too), and a key's last number is read
/// back. (The in-memory scenarios check the cadence itself, with no
/// clock to race.)
#[tokio::test]
async fn a_numbering_relay_keeps_the_log_short() {
    let (db, outbox) = migrated().await;
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(outbox.clone(), publisher.clone())
        .key_sequences(true)
        .batch_size(1)
        .poll_interval(Duration::from_millis(20))
        .spawn()
        .unwrap();
    let keys = ["a", "b", "c"];
    let messages: Vec<NewMessage> = (0..300).map(|i| msg(keys[i % 3], i as u64)).collect();
    enqueue(&outbox, &db, messages).await;
    wait_for("300 messages published", TIMEOUT, || async {
        publisher.messages().len() >= 300
    })
    .await;
    // One acknowledgement a message: 300 log rows unless folded on the way.
    let waiting = log_rows(&db).await;
    assert!(
        waiting < 100,
        "{waiting} log rows after 300 acknowledgements"
    );
    relay.shutdown().await.unwrap();
    let last: i64 = sqlx::query_scalar(
        "SELECT max(n) FROM (SELECT last_sequence FROM outbox.key_sequences WHERE partition_key = 'a' \
         UNION ALL SELECT u.n FROM outbox.key_sequence_log l, unnest(l.keys, l.numbers) u(k, n) \
         WHERE u.k = 'a') s(n)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(last, 100);
}

/// A log row whose arrays do not pair up (written by hand, or damaged)
/// does not stop the folds: its pairs of a key and a number are folded,
/// the rest dropped, and the rows beside it are folded too.
#[tokio::test]
async fn a_log_row_that_does_not_pair_up_does_not_stop_the_folds() {
    let (db, outbox) = migrated().await;
    add_to_log(
        &db,
        "('{k,j}', '{5}'), ('{NULL,m}', '{1,2}'), ('{n}', '{NULL}'), ('{k}', '{6}')",
    )
    .await;
    folded_by_a_relay(&db, &outbox).await;
    assert_eq!(stored(&db, "k").await, Some(6));
    assert_eq!(stored(&db, "m").await, Some(2));
    assert_eq!(stored(&db, "j").await, None, "j came without a number");
    assert_eq!(stored(&db, "n").await, None, "n came with a NULL number");
}

/// A key whose only entry in the log has no number is numbered from 1
/// while that row waits for a fold (a transaction holds `key_sequences`
/// in SHARE mode, so no fold can run): the read takes no number from it.
#[tokio::test]
async fn a_log_entry_without_a_number_does_not_stop_its_key_being_numbered() {
    let (db, outbox) = migrated().await;
    add_to_log(&db, "('{q}', '{NULL}')").await;
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox.key_sequences IN SHARE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let got = numbered(&db, &outbox, vec![msg("q", 1)]).await;
    assert_eq!(got, [Some(1)]);
    holder.rollback().await.unwrap();
}
