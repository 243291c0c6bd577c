//! An acknowledgement that PostgreSQL rolls back to break a deadlock runs
//! again, instead of failing its round and having its batch published a
//! second time.
//!
//! Each test gets its own database, created from `OUTBOX_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped at the end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outbox::{FnPublisher, NewMessage, OutboxMessage, PgOutbox, Relay};
use sqlx::Connection;
use tokio::sync::{mpsc, oneshot, Mutex};

mod support;

use support::pg::TestDb;
use support::wait_for;

/// Whether a backend of the test's database other than `except` waits for
/// a row lock.
async fn someone_waits_for_a_lock(db: &TestDb, except: i32) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> $1 AND wait_event_type = 'Lock')",
    )
    .bind(except)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// The cycle: the acknowledgement holds its lease rows FOR SHARE (its
/// fence) and waits for the message's row, which another transaction
/// locked after the publish; that transaction then waits to update the
/// lease rows. PostgreSQL aborts the acknowledgement, whose
/// `deadlock_timeout` (1 s) runs out first. Without a retry its round
/// fails, the relay claims the message again, and the publisher sees it
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_chosen_as_a_deadlock_victim_runs_again() {
    let db = TestDb::new().await;
    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.expect("migrate");

    // The first call hands its message's position over and waits for the
    // test to lock the message's row.
    let calls = Arc::new(AtomicUsize::new(0));
    let (published_tx, mut published_rx) = mpsc::unbounded_channel::<(i64, oneshot::Sender<()>)>();
    let published_tx = Arc::new(Mutex::new(Some(published_tx)));
    let publisher = Arc::new(FnPublisher::new({
        let (calls, published_tx) = (calls.clone(), published_tx.clone());
        move |m: OutboxMessage| {
            let (calls, published_tx) = (calls.clone(), published_tx.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if let Some(tx) = published_tx.lock().await.take() {
                    let (go, locked) = oneshot::channel();
                    tx.send((m.position(), go)).unwrap();
                    locked.await.unwrap();
                }
                Ok(())
            }
        }
    }));
    let relay = Relay::builder(outbox.clone(), publisher.clone())
        .poll_interval(Duration::from_millis(20))
        .spawn()
        .unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .enqueue(
            &mut *tx,
            NewMessage::bytes("t", b"x".to_vec()).with_partition_key("k"),
        )
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();

    let (seq, go) = published_rx.recv().await.expect("the message is published");
    let mut other = sqlx::PgConnection::connect_with(&db.options())
        .await
        .unwrap();
    let other_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut other)
        .await
        .unwrap();
    let mut locker = other.begin().await.unwrap();
    // Only the acknowledgement's side looks for the cycle.
    sqlx::query("SET LOCAL deadlock_timeout = '60s'")
        .execute(&mut *locker)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM outbox.messages WHERE seq = $1 FOR UPDATE")
        .bind(seq)
        .fetch_one(&mut *locker)
        .await
        .unwrap();
    go.send(()).unwrap();
    wait_for(
        "the acknowledgement to wait for the locked message",
        Duration::from_secs(30),
        || someone_waits_for_a_lock(&db, other_pid),
    )
    .await;
    // Waits for the fence's share lock until PostgreSQL aborts the
    // acknowledgement: its return proves the cycle was broken on that side.
    tokio::time::timeout(
        Duration::from_secs(30),
        sqlx::query("UPDATE outbox.leases SET owner = owner").execute(&mut *locker),
    )
    .await
    .expect("PostgreSQL broke the deadlock")
    .unwrap();
    locker.rollback().await.unwrap();

    wait_for(
        "the message acknowledged",
        Duration::from_secs(30),
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
                .fetch_one(&db.pool)
                .await
                .unwrap();
            n == 0
        },
    )
    .await;
    relay.shutdown().await.unwrap();
    // The row is gone only once an acknowledgement landed, after every
    // publication of it.
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the message was published again after its acknowledgement deadlocked"
    );
    db.drop().await;
}
