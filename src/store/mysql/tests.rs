//! Tests of what only this backend has: every statement prepared by the
//! server, against migrated tables, and transactions begun by a caller
//! that went away (the scenarios of the conformance suite run the rest).

use sqlx::mysql::MySqlPoolOptions;
use sqlx::Executor;
use uuid::Uuid;

use super::{begin_detached, execute_after, MySqlOutbox};
use crate::store::sealed::StoreOps;
use crate::store::{Ack, AckBatch, Acquire, Claim, Disposition};
use crate::NewMessage;

/// The server the tests use: `OUTBOX_TEST_MYSQL`, default the local MariaDB.
fn server_url() -> String {
    std::env::var("OUTBOX_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A fresh database on the test server with a migrated outbox in it
/// (prefix `p_`): the server's admin pool, the outbox and the database's
/// name, to drop with [`drop_database`].
async fn fresh_outbox() -> (sqlx::MySqlPool, MySqlOutbox, String) {
    let url = server_url();
    let admin = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("MariaDB/MySQL at {url} is unreachable: {e}"));
    let db = format!("outbox_unit_{}", Uuid::now_v7().simple());
    admin
        .execute(format!("CREATE DATABASE `{db}`").as_str())
        .await
        .unwrap();
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (url.clone(), String::new()),
    };
    let base = base.rsplit_once('/').map_or(base.as_str(), |(b, _)| b);
    let pool = MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&format!("{base}/{db}{query}"))
        .await
        .unwrap();
    let o = MySqlOutbox::builder(pool)
        .table_prefix("p_")
        .build()
        .unwrap();
    o.migrate().await.unwrap();
    (admin, o, db)
}

async fn drop_database(admin: &sqlx::MySqlPool, o: MySqlOutbox, db: &str) {
    o.pool().close().await;
    admin
        .execute(format!("DROP DATABASE `{db}`").as_str())
        .await
        .unwrap();
}

/// A batch whose payloads add up to more than the server's
/// `max_allowed_packet` goes in, split into statements that each fit.
#[tokio::test]
async fn a_batch_larger_than_the_servers_packet_limit_goes_in_whole() {
    let (admin, o, db) = fresh_outbox().await;
    let packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
        .fetch_one(o.pool())
        .await
        .unwrap();
    let size = 1 << 20;
    let count = usize::try_from(packet).unwrap() / size + 4;
    let messages: Vec<NewMessage> = (0..count)
        .map(|i| {
            let mut payload = vec![b'x'; size - 16];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            NewMessage::bytes("big", payload).with_partition_key(format!("k{}", i % 3))
        })
        .collect();
    let mut tx = o.pool().begin().await.unwrap();
    let done = o.enqueue_batch(&mut tx, messages).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(done.inserted.len(), count);
    assert_eq!(o.pending_count().await.unwrap(), count as i64);
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT CAST(LENGTH(payload) AS SIGNED), SUBSTRING(payload, 1, 8) FROM p_messages ORDER BY seq")
            .fetch_all(o.pool())
            .await
            .unwrap();
    for (i, (len, head)) in rows.iter().enumerate() {
        assert_eq!(*len as usize, size - 16);
        assert_eq!(
            head.as_slice(),
            &(i as u64).to_be_bytes(),
            "row {i} out of order"
        );
    }
    drop_database(&admin, o, &db).await;
}

#[tokio::test]
async fn every_statement_is_accepted_by_the_server() {
    let (admin, o, db) = fresh_outbox().await;
    let pool = o.pool().clone();
    // Twice: a second run finds the version recorded and changes nothing.
    o.migrate().await.unwrap();
    let sql = &o.inner.sql;
    let mut all: Vec<String> = sql
        .each()
        .into_iter()
        .filter(|(name, _)| !name.ends_with("_template") && *name != "insert_batch_returning")
        .map(|(_, s)| super::statements::with_pairs(&super::statements::with_list(s, 3), 3))
        .collect();
    all.push(sql.insert_batch(3, false));
    all.push(sql.insert_batch(3, true));
    all.push(sql.lock_slots(3));
    // One message through the relay's operations.
    let mut tx = pool.begin().await.unwrap();
    let msg = NewMessage::json("t", &serde_json::json!({"n": 1}))
        .unwrap()
        .with_partition_key("k");
    o.enqueue(&mut tx, msg).await.unwrap();
    o.commit(tx).await.unwrap();
    let relay = Uuid::now_v7();
    let ttl = std::time::Duration::from_secs(5);
    let leases = o
        .acquire(Acquire {
            relay,
            max: 64,
            ttl,
        })
        .await
        .unwrap();
    assert_eq!(leases.len(), 64);
    let buckets: Vec<i32> = leases.iter().map(|l| l.bucket).collect();
    let claimed = o
        .claim(Claim {
            buckets: Some(&buckets),
            bucket_count: 64,
            now: chrono::Utc::now(),
            limit: 10,
            exclude: &[],
            max_bytes: 1 << 20,
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let acks = [Ack::of(&claimed[0], Disposition::Published)];
    let report = o
        .ack(AckBatch {
            relay,
            leases: &leases,
            acks: &acks,
            retain: true,
            now: chrono::Utc::now(),
        })
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
    assert_eq!(o.pending_count().await.unwrap(), 0);
    assert_eq!(o.published(10).await.unwrap().len(), 1);

    let mut failures = Vec::new();
    for s in &all {
        // Every placeholder rendered, the file's opening comment and its
        // closing `;` left out.
        assert!(!s.contains('{') && !s.contains('}'), "{s}");
        assert!(!s.starts_with("--") && !s.ends_with(';'), "{s}");
        if let Err(e) = (&pool).prepare(s.as_str()).await {
            failures.push(format!("{s}\n  -> {e}"));
        }
    }
    drop_database(&admin, o, &db).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A pool of a single connection to `o`'s database, where an empty table
/// `t (n INT)` is made.
async fn one_connection_and_table(o: &MySqlOutbox) -> sqlx::MySqlPool {
    let one = MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with(o.pool().connect_options().as_ref().clone())
        .await
        .unwrap();
    one.execute("CREATE TABLE t (n INT)").await.unwrap();
    one
}

/// A caller dropped while its `BEGIN` is on the way leaves no transaction
/// open on the pool's connection: a statement run on it next, outside any
/// transaction, commits. (Through sqlx's own `begin_with`, the connection
/// goes back to the pool inside the transaction, and the insert is never
/// seen from another connection.)
#[tokio::test]
async fn a_begin_dropped_on_the_way_leaves_no_transaction_open() {
    let (admin, o, db) = fresh_outbox().await;
    let one = one_connection_and_table(&o).await;
    // A BEGIN the server answers after 300 ms, dropped after 50.
    let begun = begin_detached(&one, Some("START TRANSACTION; DO SLEEP(0.3)"));
    let dropped = tokio::time::timeout(std::time::Duration::from_millis(50), begun).await;
    assert!(dropped.is_err(), "the begin was to be dropped on the way");
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&one)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
        .fetch_one(o.pool())
        .await
        .unwrap();
    assert_eq!(seen, 1, "the insert ran inside a transaction left open");
    one.close().await;
    drop_database(&admin, o, &db).await;
}

/// A caller dropped between `SET TRANSACTION` and its statement leaves no
/// isolation level behind for the pool's next transaction: the connection
/// is closed rather than handed back. (Handed back, the next transaction
/// runs at `READ COMMITTED`.)
#[tokio::test]
async fn a_statement_dropped_on_the_way_leaves_no_isolation_level_behind() {
    let (admin, o, db) = fresh_outbox().await;
    let one = one_connection_and_table(&o).await;
    // The isolation level of the next transaction is set after 300 ms; the
    // caller is gone after 50, before its statement could use it.
    let run = execute_after(
        &one,
        "DO SLEEP(0.3); SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        sqlx::query("INSERT INTO t VALUES (1)"),
    );
    let dropped = tokio::time::timeout(std::time::Duration::from_millis(50), run).await;
    assert!(
        dropped.is_err(),
        "the statement was to be dropped on the way"
    );
    // The pool's next transaction runs at the pool's own level.
    let mut tx = one.begin().await.unwrap();
    let thread: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (2)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let level: String = sqlx::query_scalar(
        "SELECT trx_isolation_level FROM information_schema.innodb_trx \
         WHERE trx_mysql_thread_id = ?",
    )
    .bind(thread)
    .fetch_one(o.pool())
    .await
    .unwrap();
    // The pools here run at the servers' default, REPEATABLE READ.
    assert_ne!(
        level, "READ COMMITTED",
        "the transaction inherited the level set for a statement that never ran"
    );
    tx.rollback().await.unwrap();
    one.close().await;
    drop_database(&admin, o, &db).await;
}

/// With a relay pool of its own, the relay needs nothing of the
/// application's pool: it drains everything while the application holds
/// that pool's only connection (a pool exhausted, or a connection left
/// inside a transaction by application code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_pool_of_its_own_keeps_the_relay_off_the_application_pool() {
    use std::time::Duration;

    let (admin, o, db) = fresh_outbox().await;
    let options = o.pool().connect_options().as_ref().clone();
    let app = MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(options.clone())
        .await
        .unwrap();
    let relay_pool = MySqlPoolOptions::new()
        .max_connections(3)
        .connect_with(options)
        .await
        .unwrap();
    let outbox = MySqlOutbox::builder(app.clone())
        .table_prefix("p_")
        .relay_pool(relay_pool.clone())
        .build()
        .unwrap();
    let batch: Vec<_> = (0..300)
        .map(|i| {
            NewMessage::json("t", &i)
                .unwrap()
                .with_partition_key(format!("k{}", i % 7))
        })
        .collect();
    let mut conn = app.acquire().await.unwrap();
    outbox.enqueue_batch(&mut conn, batch).await.unwrap();
    drop(conn);
    // The application's only connection, held inside a transaction.
    let mut held = app.begin().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *held).await.unwrap();
    let publisher = crate::InMemoryPublisher::new();
    let relay = crate::Relay::builder(outbox.clone(), publisher.clone())
        .poll_interval(Duration::from_millis(20))
        .stats_interval(Duration::from_millis(50))
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while publisher.len() < 300 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} of 300 published beside a held application pool",
            publisher.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A stats pass or two ran meanwhile, on the relay's pool as well.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(relay.health().last_error, None, "the relay met an error");
    relay.shutdown().await.unwrap();
    held.rollback().await.unwrap();
    assert_eq!(outbox.pending_count().await.unwrap(), 0);
    relay_pool.close().await;
    app.close().await;
    drop_database(&admin, o, &db).await;
}
