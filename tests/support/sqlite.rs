//! A fresh SQLite database file per test, and helpers for an outbox in it.

use std::path::PathBuf;
use std::time::Duration;

use outbox::{DeadLetter, NewMessage, Publisher, Relay, RelayHandle, RetryPolicy, SqliteOutbox};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// A database file in the temporary directory, opened in WAL mode with a
/// busy timeout of 10 s; deleted (with its WAL files) when dropped.
pub struct TempDb {
    pub pool: SqlitePool,
    pub path: PathBuf,
}

impl TempDb {
    /// A database named `<prefix>-<uuid>.db`, with a pool of 4 connections.
    pub async fn new(prefix: &str) -> TempDb {
        Self::with_max_connections(prefix, 4).await
    }

    /// As [`TempDb::new`], with a pool of `max_connections`.
    pub async fn with_max_connections(prefix: &str, max_connections: u32) -> TempDb {
        let prefix: String = prefix
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '-' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '-',
            })
            .collect();
        let path = std::env::temp_dir().join(format!("{prefix}-{}.db", uuid::Uuid::now_v7()));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await
            .expect("open the test database");
        TempDb { pool, path }
    }

    /// An outbox with the default table names in this database, migrated.
    pub async fn outbox(&self) -> SqliteOutbox {
        let outbox = SqliteOutbox::new(self.pool.clone());
        outbox.migrate().await.expect("migrate the outbox");
        outbox
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A new database (see [`TempDb::new`]) with a migrated outbox.
pub async fn migrated(prefix: &str) -> (TempDb, SqliteOutbox) {
    let db = TempDb::new(prefix).await;
    let outbox = db.outbox().await;
    (db, outbox)
}

/// As [`migrated`], with an outbox that takes payloads up to
/// `max_payload_bytes`: for a test of what a broker refuses that the
/// outbox's own default limit would refuse first.
pub async fn migrated_with_payload_limit(
    prefix: &str,
    max_payload_bytes: usize,
) -> (TempDb, SqliteOutbox) {
    let db = TempDb::new(prefix).await;
    let outbox = SqliteOutbox::builder(db.pool.clone())
        .max_payload_bytes(max_payload_bytes)
        .build()
        .expect("outbox");
    outbox.migrate().await.expect("migrate the outbox");
    (db, outbox)
}

/// Enqueues `messages` in one transaction and commits it.
pub async fn enqueue(db: &TempDb, outbox: &SqliteOutbox, messages: Vec<NewMessage>) {
    let mut tx = db.pool.begin().await.unwrap();
    outbox.enqueue_batch(&mut *tx, messages).await.unwrap();
    outbox.commit(tx).await.unwrap();
}

/// The number of messages waiting in the outbox.
pub async fn pending(outbox: &SqliteOutbox) -> i64 {
    outbox.pending_count().await.expect("pending_count")
}

/// Waits until the outbox is empty; panics naming `what` after `timeout`.
pub async fn drained(outbox: &SqliteOutbox, what: &str, timeout: Duration) {
    super::wait_for(what, timeout, || async { pending(outbox).await == 0 }).await;
}

/// Whether some message has been attempted at least `min_attempts` times
/// and the last error recorded is a transient publish failure.
pub async fn transient_failures(db: &TempDb, min_attempts: i64) -> bool {
    let (attempts, error): (Option<i64>, Option<String>) =
        sqlx::query_as("SELECT max(attempts), max(last_error) FROM outbox_messages")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    attempts.unwrap_or(0) >= min_attempts
        && error.is_some_and(|e| e.contains("transient publish failure"))
}

/// Enqueues `messages` while the destination is down and waits (up to
/// `timeout`) until some message has been attempted at least
/// `min_attempts` times, each failure recorded as transient; checks that
/// nothing was dead-lettered meanwhile.
pub async fn enqueue_until_transient_failures(
    db: &TempDb,
    outbox: &SqliteOutbox,
    messages: Vec<NewMessage>,
    min_attempts: i64,
    timeout: Duration,
) {
    enqueue(db, outbox, messages).await;
    let what = format!("{min_attempts} failed attempts recorded as transient");
    super::wait_for(&what, timeout, || transient_failures(db, min_attempts)).await;
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

/// Asserts that `dead` was dead-lettered at its first attempt (a permanent
/// failure: no retry), with an error that mentions `error`.
pub fn assert_dead_at_once(dead: &DeadLetter, error: &str) {
    assert_eq!(dead.attempts, 1, "permanent: no retry");
    assert!(dead.last_error.contains(error), "{}", dead.last_error);
}

/// A relay polling every 50 ms with `retry`.
pub fn relay(outbox: &SqliteOutbox, publisher: impl Publisher, retry: RetryPolicy) -> RelayHandle {
    Relay::builder(outbox.clone(), publisher)
        .retry(retry)
        .poll_interval(Duration::from_millis(50))
        .spawn()
        .expect("relay")
}

/// Runs a relay with `publisher` until the outbox is empty, then stops it.
/// Transient failures are retried within milliseconds, up to 1000 times,
/// so what ends as a dead letter failed permanently.
pub async fn relay_until_drained(
    outbox: &SqliteOutbox,
    publisher: impl Publisher,
    what: &str,
    timeout: Duration,
) {
    let relay = Relay::builder(outbox.clone(), publisher)
        .retry(super::fast_retry().max_attempts(1000))
        .spawn()
        .expect("relay");
    drained(outbox, what, timeout).await;
    relay.shutdown().await.expect("relay shutdown");
}

/// Waits until one message is a dead letter, stops `relay` and returns that
/// dead letter.
pub async fn the_dead_letter(
    outbox: &SqliteOutbox,
    relay: RelayHandle,
    timeout: Duration,
) -> DeadLetter {
    super::wait_for("the dead letter", timeout, || async {
        outbox.dead_letters(10).await.unwrap().len() == 1
    })
    .await;
    relay.shutdown().await.expect("relay shutdown");
    let mut dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    dead.remove(0)
}
