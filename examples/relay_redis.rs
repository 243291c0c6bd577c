//! Candidate status changes, from an SQLite outbox to a Redis stream and
//! back out with XREAD.
//!
//! The tracking service records each status change together with its
//! event in one transaction; the relay appends the committed events to the
//! stream `recruiting:<run>:candidates` through an atomic guard that
//! appends each event id once; a reader, as payroll or the CRM would run,
//! reads them back.
//!
//! Needs Redis at `$REDIS_URL` (default `redis://127.0.0.1:6379`).
//! Run with `cargo run --example relay_redis --features redis`.

use std::borrow::Cow;
use std::time::Duration;

use outbox::publisher::RedisStreamsPublisher;
use outbox::{Event, Relay, SqliteOutbox};
use redis::streams::StreamReadReply;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The event other services care about.
#[derive(Debug, Serialize, Deserialize)]
struct CandidateStatusChanged {
    candidate_id: i64,
    name: String,
    from: String,
    to: String,
}

impl Event for CandidateStatusChanged {
    const EVENT_TYPE: &'static str = "CandidateStatusChanged";

    fn topic(&self) -> Cow<'_, str> {
        "candidates".into()
    }

    // Events of one candidate are published in the order they committed.
    fn partition_key(&self) -> Option<String> {
        Some(format!("candidate-{}", self.candidate_id))
    }
}

/// Changes a candidate's status and records the event, in one transaction.
async fn change_status(
    pool: &sqlx::SqlitePool,
    outbox: &SqliteOutbox,
    candidate_id: i64,
    to: &str,
) -> outbox::Result<()> {
    // IMMEDIATE: the transaction reads before it writes; started deferred,
    // it could fail with SQLITE_BUSY when the relay writes in between.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let (name, from): (String, String) =
        sqlx::query_as("SELECT name, status FROM candidates WHERE id = ?")
            .bind(candidate_id)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query("UPDATE candidates SET status = ? WHERE id = ?")
        .bind(to)
        .bind(candidate_id)
        .execute(&mut *tx)
        .await?;
    let event = CandidateStatusChanged {
        candidate_id,
        name: name.clone(),
        from: from.clone(),
        to: to.to_owned(),
    };
    let id = outbox.publish_event(&mut *tx, &event).await?.id();
    outbox.commit(tx).await?;
    println!("[tracking] {name}: {from} -> {to} (event {id})");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let run = uuid::Uuid::now_v7().simple().to_string();

    // The service's database, with the outbox beside its own table.
    let path = std::env::temp_dir().join(format!("outbox-relay-redis-{run}.db"));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5)),
        )
        .await?;
    sqlx::query("CREATE TABLE candidates (id INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO candidates VALUES (1, 'Barbara Liskov', 'applied'), (2, 'Donald Knuth', 'interviewing')")
        .execute(&pool)
        .await?;
    let outbox = SqliteOutbox::new(pool.clone());
    outbox.migrate().await?;

    let prefix = format!("recruiting:{run}:");
    let dedupe_prefix = format!("recruiting:{run}:dedupe:");
    let stream = format!("{prefix}candidates");
    let publisher = RedisStreamsPublisher::from_url(&url)?
        .with_stream_prefix(&prefix)
        .with_dedupe_prefix(&dedupe_prefix)
        .with_max_len(10_000);
    let relay = Relay::builder(outbox.clone(), publisher).spawn()?;

    change_status(&pool, &outbox, 1, "interviewing").await?;
    change_status(&pool, &outbox, 2, "offer").await?;
    change_status(&pool, &outbox, 1, "offer").await?;
    change_status(&pool, &outbox, 2, "hired").await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while outbox.pending_count().await? > 0 {
        if tokio::time::Instant::now() > deadline {
            return Err("the relay did not publish within 30 s; is Redis running?".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await?;

    // Payroll reads the stream from the start.
    println!();
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let reply: StreamReadReply = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(&stream)
        .arg("0")
        .query_async(&mut conn)
        .await?;
    for entry in reply.keys.iter().flat_map(|k| &k.ids) {
        let payload: Vec<u8> = entry.get("payload").unwrap_or_default();
        let event: CandidateStatusChanged = serde_json::from_slice(&payload)?;
        println!(
            "[payroll]  {stream} {} id={} type={} key={}: {} is now {}",
            entry.id,
            entry.get::<String>("id").unwrap_or_default(),
            entry.get::<String>("event_type").unwrap_or_default(),
            entry.get::<String>("partition_key").unwrap_or_default(),
            event.name,
            event.to
        );
    }

    // Clean up the stream and the dedupe keys of this run.
    let mut keys: Vec<String> = vec![stream.clone()];
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{dedupe_prefix}*"))
            .query_async(&mut conn)
            .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    println!("\nFour status changes committed -> four stream entries, per candidate in order.");
    Ok(())
}
