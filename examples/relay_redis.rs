//! Candidate status changes, from an SQLite outbox to a Redis stream and
//! back out with XREAD.
//!
//! The tracking service records each status change together with its
//! event in one transaction; the relay appends the committed events to the
//! stream `recruiting:<run>:candidates` through an atomic guard that
//! appends each event id once; a reader, as payroll or the CRM would run,
//! reads them back.
//!
//! The tracking service (`tracking_service/`) and its SQLite file
//! (`demo_db/`) are shared by relay_nats, relay_rabbitmq and relay_redis;
//! this file holds what is particular to Redis.
//!
//! Needs Redis at `$REDIS_URL` (default `redis://127.0.0.1:6379`).
//! Run with `cargo run --example relay_redis --features redis`.

use outbox::publisher::RedisStreamsPublisher;
use outbox::Relay;
use redis::streams::StreamReadReply;
use tracking_service::{
    record_four_changes, service_database, wait_until_published, CandidateStatusChanged,
};

mod demo_db;
mod tracking_service;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let run = uuid::Uuid::now_v7().simple().to_string();

    // The service's database, with the outbox beside its own table.
    let (db, outbox) = service_database("relay-redis", ["Barbara Liskov", "Donald Knuth"]).await?;

    let prefix = format!("recruiting:{run}:");
    let dedupe_prefix = format!("recruiting:{run}:dedupe:");
    let stream = format!("{prefix}candidates");
    let publisher = RedisStreamsPublisher::from_url(&url)?
        .with_stream_prefix(&prefix)
        .with_dedupe_prefix(&dedupe_prefix)
        .with_max_len(10_000);
    let relay = Relay::builder(outbox.clone(), publisher).spawn()?;

    record_four_changes(&db.pool, &outbox).await?;
    wait_until_published(&outbox, "Redis").await?;
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
    db.remove().await;
    println!("\nFour status changes committed -> four stream entries, per candidate in order.");
    Ok(())
}
