//! Tests of what the conformance suite cannot reach through the public
//! API: claims around positions in flight, read by range.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};
use uuid::Uuid;

use super::PgOutbox;
use crate::store::sealed::StoreOps;
use crate::store::Claim;
use crate::NewMessage;

/// The server's maintenance database: `OUTBOX_TEST_PG`, default the local
/// PostgreSQL.
fn admin_options() -> PgConnectOptions {
    std::env::var("OUTBOX_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
        .parse()
        .expect("OUTBOX_TEST_PG is a URL")
}

/// A fresh database (named `outbox_test_*`, as the suite's, so a run
/// killed before it drops it leaves it to the next run's sweep) with a
/// migrated outbox in it.
async fn fresh_outbox() -> (PgOutbox, String) {
    let admin = admin_options();
    let mut conn = admin
        .connect()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is unreachable: {e}"));
    let db = format!("outbox_test_{}", Uuid::now_v7().simple());
    conn.execute(format!("CREATE DATABASE {db}").as_str())
        .await
        .unwrap();
    conn.close().await.ok();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(admin.database(&db))
        .await
        .unwrap();
    let o = PgOutbox::builder(pool).build().unwrap();
    o.migrate().await.unwrap();
    (o, db)
}

async fn drop_database(o: PgOutbox, db: &str) {
    o.pool().close().await;
    let mut conn = admin_options().connect().await.unwrap();
    conn.execute(format!("DROP DATABASE {db} WITH (FORCE)").as_str())
        .await
        .unwrap();
}

/// Commits one message of key `key` and returns its position.
async fn commit_one(o: &PgOutbox, pool: &PgPool, key: &str) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    let msg = NewMessage::json("t", &serde_json::json!({ "k": key }))
        .unwrap()
        .with_partition_key(key);
    o.enqueue(&mut *tx, msg).await.unwrap();
    let seq: i64 = sqlx::query_scalar("SELECT max(seq) FROM outbox.messages")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    seq
}

/// The positions a claim of every bucket takes beside `in_flight`.
async fn claim(o: &PgOutbox, in_flight: &[i64], limit: i64) -> Vec<i64> {
    let batch = o
        .claim(Claim {
            buckets: None,
            bucket_count: 64,
            now: chrono::Utc::now(),
            limit,
            exclude: in_flight,
            max_bytes: 1 << 20,
        })
        .await
        .unwrap();
    batch.messages.iter().map(|m| m.message.seq).collect()
}

/// A claim leaves out exactly the positions in flight, in any order and
/// with repeats, and takes everything else in position order: before
/// them, in the gaps between them, after them; a message that commits
/// late inside the span in flight is taken by the next claim.
#[tokio::test]
async fn claims_leave_out_positions_in_flight_and_read_their_gaps() {
    let (o, db) = fresh_outbox().await;
    let pool = o.pool().clone();
    let mut all = Vec::new();
    for i in 0..20 {
        all.push(commit_one(&o, &pool, &format!("k{i}")).await);
    }
    assert_eq!(claim(&o, &[], 100).await, all);
    let in_flight = [all[9], all[3], all[4], all[5], all[4], all[8], all[15]];
    let rest: Vec<i64> = all
        .iter()
        .copied()
        .filter(|p| !in_flight.contains(p))
        .collect();
    assert_eq!(rest.len(), 14);
    assert_eq!(claim(&o, &in_flight, 100).await, rest);
    assert_eq!(claim(&o, &in_flight, 5).await, rest[..5]);
    // Everything in flight, or one position alone.
    assert!(claim(&o, &all, 100).await.is_empty());
    assert_eq!(claim(&o, &[all[0]], 100).await, all[1..]);

    // A message inside the span in flight commits after the claim that
    // put the span in flight: w and z are claimed, x in between is not
    // visible yet.
    let w = commit_one(&o, &pool, "w").await;
    let mut late = pool.begin().await.unwrap();
    let msg = NewMessage::json("t", &serde_json::json!({ "k": "x" }))
        .unwrap()
        .with_partition_key("x");
    o.enqueue(&mut *late, msg).await.unwrap();
    let z = commit_one(&o, &pool, "z").await;
    let before = claim(&o, &all, 100).await;
    assert_eq!(before, [w, z]);
    late.commit().await.unwrap();
    let mut in_flight = all.clone();
    in_flight.extend([w, z]);
    let after = claim(&o, &in_flight, 100).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(
        w < after[0] && after[0] < z,
        "{after:?} between {w} and {z}"
    );
    drop_database(o, &db).await;
}
