//! Tests of what the conformance suite cannot reach through the public
//! API: claims around positions in flight, read by range, and
//! transactions begun by a caller that went away.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};
use uuid::Uuid;

use super::{begin, PgOutbox};
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

/// A message of key `key`.
fn message(key: &str) -> NewMessage {
    NewMessage::json("t", &serde_json::json!({ "k": key }))
        .unwrap()
        .with_partition_key(key)
}

/// Commits one message of key `key` and returns its position.
async fn commit_one(o: &PgOutbox, key: &str) -> i64 {
    let mut tx = o.pool().begin().await.unwrap();
    o.enqueue(&mut *tx, message(key)).await.unwrap();
    let seq: i64 = sqlx::query_scalar("SELECT max(seq) FROM outbox.messages")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    seq
}

/// Commits `n` messages of keys `k0`, `k1`, ... one transaction each:
/// their positions.
async fn commit_keys(o: &PgOutbox, n: usize) -> Vec<i64> {
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        all.push(commit_one(o, &format!("k{i}")).await);
    }
    all
}

/// The positions a claim of every bucket takes beside `in_flight`.
async fn claim(o: &PgOutbox, in_flight: &[i64], limit: i64) -> Vec<i64> {
    claim_some(o, in_flight, limit, None, 1 << 20).await.0
}

/// The positions a claim of `buckets` of 32 (all 64 if `None`) takes
/// beside `in_flight`, and whether it says more may be waiting.
async fn claim_some(
    o: &PgOutbox,
    in_flight: &[i64],
    limit: i64,
    buckets: Option<&[i32]>,
    max_bytes: i64,
) -> (Vec<i64>, bool) {
    let batch = o
        .claim(Claim {
            buckets,
            bucket_count: if buckets.is_some() { 32 } else { 64 },
            now: chrono::Utc::now(),
            limit,
            exclude: in_flight,
            max_bytes,
        })
        .await
        .unwrap();
    let got = batch.messages.iter().map(|m| m.message.seq).collect();
    (got, batch.more)
}

/// A claim leaves out exactly the positions in flight, in any order and
/// with repeats, and takes everything else in position order: before
/// them, in the gaps between them, after them; a message that commits
/// late inside the span in flight is taken by the next claim.
#[tokio::test]
async fn claims_leave_out_positions_in_flight_and_read_their_gaps() {
    let (o, db) = fresh_outbox().await;
    let all = commit_keys(&o, 20).await;
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
    let w = commit_one(&o, "w").await;
    let mut late = o.pool().begin().await.unwrap();
    o.enqueue(&mut *late, message("x")).await.unwrap();
    let z = commit_one(&o, "z").await;
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

/// Every branch of the read around positions in flight keeps the claim's
/// tests: parked, sleeping and not yet due messages stay out before, in
/// and after the span; under another bucket count than the index's (the
/// claim then filters by bucket) only the buckets asked for come; the
/// byte budget cuts the merged rows.
#[tokio::test]
async fn claims_around_positions_in_flight_keep_every_test() {
    let (o, db) = fresh_outbox().await;
    let pool = o.pool().clone();
    let all = commit_keys(&o, 20).await;
    let in_flight = [all[2], all[10], all[18]];
    // Before the span, in each gap, after it.
    let set = |column: &str, value: &str, seqs: &[i64]| {
        let sql = format!("UPDATE outbox.messages SET {column} = {value} WHERE seq = ANY($1)");
        let seqs = seqs.to_vec();
        let pool = pool.clone();
        async move {
            sqlx::query(&sql).bind(seqs).execute(&pool).await.unwrap();
        }
    };
    set(
        "available_at",
        "now() + interval '1 hour'",
        &[all[0], all[14]],
    )
    .await;
    set("parked", "true", &[all[4], all[19]]).await;
    set("sleeping", "true", &[all[12]]).await;
    let left_out = [0, 2, 4, 10, 12, 14, 18, 19];
    let expected: Vec<i64> = (0..20)
        .filter(|i| !left_out.contains(i))
        .map(|i| all[i])
        .collect();
    assert_eq!(claim(&o, &in_flight, 100).await, expected);

    // The byte budget: always one message, and more said to wait.
    let (one, more) = claim_some(&o, &in_flight, 100, None, 1).await;
    assert_eq!((one, more), (vec![expected[0]], true));

    // Half of 32 buckets, as the database hashes keys.
    let buckets: Vec<i32> = (0..16).collect();
    let theirs: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM outbox.messages \
         WHERE seq = ANY($1) AND (hashtext(partition_key) & 2147483647) % 32 = ANY($2) \
         ORDER BY seq",
    )
    .bind(&expected)
    .bind(&buckets)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        !theirs.is_empty() && theirs.len() < expected.len(),
        "{theirs:?} of {expected:?}"
    );
    let (got, _) = claim_some(&o, &in_flight, 100, Some(&buckets), 1 << 20).await;
    assert_eq!(got, theirs);
    drop_database(o, &db).await;
}

/// A caller dropped while its `BEGIN` is on the way leaves no transaction
/// open on the pool's connection: a statement run on it next, outside any
/// transaction, commits. (Through sqlx's own `begin_with`, the connection
/// goes back to the pool inside the transaction, and the insert is never
/// seen from another connection.)
#[tokio::test]
async fn a_begin_dropped_on_the_way_leaves_no_transaction_open() {
    let (o, db) = fresh_outbox().await;
    let one = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(admin_options().database(&db))
        .await
        .unwrap();
    one.execute("CREATE TABLE t (n int)").await.unwrap();
    // A BEGIN the server answers after 300 ms, dropped after 50.
    let begun = begin(&one, Some("BEGIN; SELECT pg_sleep(0.3)"));
    let dropped = tokio::time::timeout(std::time::Duration::from_millis(50), begun).await;
    assert!(dropped.is_err(), "the begin was to be dropped on the way");
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&one)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(o.pool())
        .await
        .unwrap();
    assert_eq!(seen, 1, "the insert ran inside a transaction left open");
    one.close().await;
    drop_database(o, &db).await;
}
