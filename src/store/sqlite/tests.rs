//! The SQLite backend's operations driven one by one: leases and fencing,
//! claims, retries, blocks, dead letters, retention, statements, migrations.

use std::time::Duration;

use chrono::Utc;
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use sqlx::Executor;
use uuid::Uuid;

use super::decode::micros;
use super::SqliteOutbox;
use crate::message::{MessageId, NewMessage};
use crate::store::sealed::StoreOps;
use crate::store::shorthand::Shorthand;
use crate::store::{Ack, AckReport, Claimed, Disposition, Lease};

/// An in-memory database on one connection that never closes: the
/// database lives as long as it does.
async fn memory_pool() -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await
        .unwrap()
}

async fn outbox() -> SqliteOutbox {
    let outbox = SqliteOutbox::new(memory_pool().await);
    outbox.migrate().await.unwrap();
    outbox
}

async fn enqueue(outbox: &SqliteOutbox, key: Option<&str>) -> MessageId {
    let mut m = NewMessage::bytes("t", b"x".to_vec());
    if let Some(k) = key {
        m = m.with_partition_key(k);
    }
    outbox.enqueue(outbox.pool(), m).await.unwrap().id()
}

fn ack(c: &Claimed, disposition: Disposition) -> Ack {
    Ack::of(c, disposition)
}

/// Dead-letters `c` and blocks its key.
fn dead_blocking(c: &Claimed) -> Ack {
    ack(
        c,
        Disposition::Dead {
            error: "rejected".into(),
            block_key: true,
        },
    )
}

fn published(claimed: &[Claimed]) -> Vec<Ack> {
    claimed
        .iter()
        .map(|c| ack(c, Disposition::Published))
        .collect()
}

const TTL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn one_bucket_with_fenced_leases() {
    let o = outbox().await;
    let (r1, r2) = (Uuid::now_v7(), Uuid::now_v7());
    o.check_schema().await.unwrap();
    assert_eq!(o.bucket_count().await.unwrap(), 1);
    assert!(o.listen().await.unwrap().is_none());
    assert_eq!(o.beat(r1, TTL).await, 1);
    assert_eq!(o.beat(r2, TTL).await, 2);
    assert_eq!(o.beat(r1, TTL).await, 2);

    let l1 = o.take(r1, 1, TTL).await;
    assert_eq!(
        l1,
        vec![Lease {
            bucket: 0,
            epoch: 1
        }]
    );
    assert!(o.take(r2, 1, TTL).await.is_empty());
    assert_eq!(o.extend(r1, &l1, TTL).await, l1);

    enqueue(&o, Some("a")).await;
    enqueue(&o, None).await;
    let claimed = o.claim_now(None, 10, &[]).await;
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|c| c.bucket == 0));
    assert!(o.claim_now(Some(&[3]), 10, &[]).await.is_empty());
    assert_eq!(o.claim_now(Some(&[0]), 10, &[]).await.len(), 2);
    // Positions in flight are left out of a claim.
    let rest = o.claim_now(None, 10, &[claimed[0].message.seq]).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].message.seq, claimed[1].message.seq);

    // Wrong owner, wrong epoch, no lease: nothing applied.
    let acks = published(&claimed);
    for (relay, leases) in [
        (r2, l1.clone()),
        (
            r1,
            vec![Lease {
                bucket: 0,
                epoch: 2,
            }],
        ),
        (r1, vec![]),
    ] {
        let rep = o.ack_as(relay, &leases, &acks).await;
        assert_eq!(
            rep,
            AckReport {
                applied: 0,
                fenced: 2,
                fenced_buckets: vec![0],
            }
        );
    }
    assert_eq!(o.pending_count().await.unwrap(), 2);

    // Hand-over: the epoch grows and the old holder is fenced.
    o.give_back(r2, &l1).await; // not r2's: no effect
    assert!(o.take(r2, 1, TTL).await.is_empty());
    o.give_back(r1, &l1).await;
    let l2 = o.take(r2, 1, TTL).await;
    assert_eq!(
        l2,
        vec![Lease {
            bucket: 0,
            epoch: 2
        }]
    );
    assert!(o.extend(r1, &l1, TTL).await.is_empty());
    let rep = o.ack_as(r1, &l1, &acks).await;
    assert_eq!(rep.fenced, 2);
    let rep = o.ack_as(r2, &l2, &acks).await;
    assert_eq!(
        rep,
        AckReport {
            applied: 2,
            fenced: 0,
            fenced_buckets: vec![],
        }
    );
    assert_eq!(o.pending_count().await.unwrap(), 0);

    // An expired lease can be taken; a live one cannot.
    let short = o.take(r1, 1, TTL).await;
    assert!(short.is_empty(), "r2's lease is live");
    o.give_back(r2, &l2).await;
    let l3 = o.take(r1, 1, Duration::from_millis(1)).await;
    assert_eq!(
        l3,
        vec![Lease {
            bucket: 0,
            epoch: 3
        }]
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let l4 = o.take(r2, 1, TTL).await;
    assert_eq!(
        l4,
        vec![Lease {
            bucket: 0,
            epoch: 4
        }]
    );
    assert!(o.extend(r1, &l3, TTL).await.is_empty());

    o.leave(r1).await.unwrap();
    assert_eq!(o.beat(r2, TTL).await, 1);
}

#[tokio::test]
async fn retries_block_and_unblock_keys() {
    let o = outbox().await;
    let r = Uuid::now_v7();
    let leases = o.take(r, 1, TTL).await;
    let first = enqueue(&o, Some("k")).await;
    let second = enqueue(&o, Some("k")).await;
    let free = enqueue(&o, None).await;
    let now = Utc::now();
    let claimed = o.claim_at(now).await;
    assert_eq!(claimed.len(), 3);

    let later = now + chrono::Duration::hours(1);
    let retry = ack(
        &claimed[0],
        Disposition::Retry {
            at: later,
            error: "down \"quoted\"\n".into(),
            block_key: true,
        },
    );
    let rep = o.ack_at(r, &leases, &[retry], false, now).await;
    assert_eq!(rep.applied, 1);
    let (attempts, at, err): (i32, i64, String) = sqlx::query_as(
        "SELECT attempts, available_at, last_error FROM outbox_messages ORDER BY seq LIMIT 1",
    )
    .fetch_one(o.pool())
    .await
    .unwrap();
    assert_eq!((attempts, at), (1, micros(later)));
    assert_eq!(err, "down \"quoted\"\n");

    // Not due yet, and the key is blocked behind it. Due in an hour, it
    // sleeps out of the claims' path until the upkeep wakes it, shortly
    // before it is due.
    let ids = |c: Vec<Claimed>| c.into_iter().map(|c| c.message.id).collect::<Vec<_>>();
    assert_eq!(ids(o.claim_at(now).await), vec![free]);
    let sleeping = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_messages WHERE sleeping = 1")
            .fetch_one(o.pool())
            .await
            .unwrap();
        n
    };
    assert_eq!(sleeping().await, 1);
    assert_eq!(ids(o.claim_at(later).await), vec![free], "asleep");
    o.park_at(now, 100).await;
    assert_eq!(sleeping().await, 1, "not woken an hour early");
    o.park_at(later - chrono::Duration::seconds(1), 100).await;
    assert_eq!(sleeping().await, 0, "woken a moment before it is due");
    let due = o.claim_at(later).await;
    assert_eq!(ids(due.clone()), vec![first, free]);
    assert_eq!(due[0].message.attempt, 2);
    let stats = o.stats().await.unwrap();
    assert_eq!(stats.pending, 3);
    assert!(stats.oldest_pending_age.is_some());
    assert_eq!(stats.dead_letters, 0);

    // Published after a retry: the key is unblocked.
    let rep = o
        .ack_at(r, &leases, &published(&due[..1]), true, later)
        .await;
    assert_eq!(rep.applied, 1);
    let next = o.claim_at(later).await;
    assert_eq!(ids(next.clone()), vec![second, free]);
    let kept = o.published(10).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].id, first);

    // Dead with a block: the key stays blocked until the dead letter
    // is replayed.
    let dead = dead_blocking(&next[0]);
    o.ack_at(r, &leases, &[dead], false, later).await;
    let third = enqueue(&o, Some("k")).await;
    assert_eq!(ids(o.claim_at(later).await), vec![free]);
    let dl = o.dead_letters(10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!((dl[0].id(), dl[0].attempts), (second, 1));
    assert_eq!(dl[0].last_error, "rejected");
    assert_eq!(o.stats().await.unwrap().dead_letters, 1);
    o.replay_dead_letter(second).await.unwrap();
    let after = o.claim_at(later).await;
    assert_eq!(ids(after.clone()), vec![second, free, third]);
    assert_eq!(after[0].message.attempt, 1);

    // Purge retained rows older than the cut-off.
    assert_eq!(o.purge_published(later, 10).await.unwrap(), 0);
    let cutoff = later + chrono::Duration::seconds(1);
    assert_eq!(o.purge_published(cutoff, 10).await.unwrap(), 1);
    assert!(o.published(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn every_statement_is_rendered_and_prepares() {
    let o = outbox().await;
    let sql = &o.inner.sql;
    let batch = sql.insert_batch([2, 1].into_iter());
    let mut batch_statements: Vec<&str> = batch.split_terminator(";\n").collect();
    assert_eq!(batch_statements.len(), 2, "{batch}");
    let mut all: Vec<&str> = sql
        .each()
        .into_iter()
        .filter(|(name, _)| *name != "insert_batch_template")
        .map(|(_, s)| s)
        .collect();
    all.append(&mut batch_statements);
    for s in all {
        // Every placeholder rendered, the file's opening comment and its
        // closing `;` left out.
        assert!(!s.contains('{') && !s.contains('}'), "{s}");
        assert!(!s.starts_with("--") && !s.ends_with(';'), "{s}");
        if let Err(e) = o.pool().prepare(s).await {
            panic!("{s}: {e}");
        }
    }
}

/// Migration 4 on a populated table: the dead letters (and the blocks that
/// name them) written under the old schema survive the rebuild, and the id
/// is no longer unique among them.
#[tokio::test]
async fn dead_letters_keyed_by_position_migrate_with_their_rows() {
    let pool = memory_pool().await;
    let o = SqliteOutbox::new(pool.clone());
    let n = &o.inner.names;
    let set = o.migrations();
    // The schema as the previous release left it.
    pool.execute(set.bookkeeping(super::migrate::CREATE_TABLE).as_str())
        .await
        .unwrap();
    for (version, migration) in super::migrate::MIGRATIONS.iter().filter(|m| m.0 <= 3) {
        pool.execute(n.render(migration).as_str()).await.unwrap();
        sqlx::query(&set.bookkeeping(super::migrate::RECORD))
            .bind(version)
            .bind(micros(Utc::now()))
            .execute(&pool)
            .await
            .unwrap();
    }
    let id = Uuid::now_v7();
    let dead = |seq: i64, key: &str| {
        format!(
            "INSERT INTO outbox_dead_letters (seq, id, topic, partition_key, event_type, \
             schema_version, payload, content_type, created_at, attempts, last_error, dead_at) \
             VALUES ({seq}, x'{}', 't', '{key}', 'e', 1, x'00', 'x', 0, 1, 'err', 0)",
            id.simple()
        )
    };
    pool.execute(dead(7, "a").as_str()).await.unwrap();
    assert!(
        pool.execute(dead(9, "b").as_str()).await.is_err(),
        "the old schema keeps one dead letter per id"
    );
    pool.execute("INSERT INTO outbox_blocked_keys VALUES ('a', 7, 0)")
        .await
        .unwrap();

    o.migrate().await.unwrap();
    pool.execute(dead(9, "b").as_str()).await.unwrap();
    let kept: Vec<(i64, String)> = o
        .dead_letters(10)
        .await
        .unwrap()
        .iter()
        .map(|d| {
            (
                d.message.position(),
                d.message.partition_key().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(kept, vec![(7, "a".to_owned()), (9, "b".to_owned())]);
    let blocked = o.blocked_keys().await.unwrap();
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].message, crate::store::BlockingMessage::Dead);
    // By id, the oldest goes first; the second waits for the first.
    o.replay_dead_letter(MessageId::from_uuid(id))
        .await
        .unwrap();
    assert!(matches!(
        o.replay_dead_letter(MessageId::from_uuid(id)).await,
        Err(crate::Error::DeadLetterIdPending(_))
    ));
    assert!(o.blocked_keys().await.unwrap().is_empty());
    assert_eq!(o.pending_count().await.unwrap(), 1);
}

/// Parking takes what stands behind a block out of the claims' path,
/// never the blocking head nor another key; a parked message holds back
/// the later messages of its key even once its block is gone (deleted by
/// hand here; so it is after an operator's lift), until the next parking
/// call unparks the key; the unpark of an acknowledgement that lifts a
/// block is immediate.
#[tokio::test]
async fn parked_messages_leave_the_claims_and_keep_their_keys_order() {
    let o = outbox().await;
    let r = Uuid::now_v7();
    let leases = o.take(r, 1, TTL).await;
    let ids = |c: Vec<Claimed>| c.into_iter().map(|c| c.message.id).collect::<Vec<_>>();
    let parked = |o: SqliteOutbox| async move {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_messages WHERE parked = 1")
            .fetch_one(o.pool())
            .await
            .unwrap();
        n
    };
    let head = enqueue(&o, Some("k")).await;
    let behind = [enqueue(&o, Some("k")).await, enqueue(&o, Some("k")).await];
    let other = enqueue(&o, Some("o")).await;
    let now = Utc::now();
    assert_eq!(o.park_at(now, 100).await, 0, "no block, nothing to park");

    // The head fails and blocks its key: the two behind it are parked,
    // in batches of the size asked.
    let claimed = o.claim_at(now).await;
    let retry = ack(
        &claimed[0],
        Disposition::Retry {
            at: now,
            error: "down".into(),
            block_key: true,
        },
    );
    o.ack_at(r, &leases, &[retry], false, now).await;
    assert_eq!(o.park_at(now, 1).await, 1);
    assert_eq!(o.park_at(now, 100).await, 1);
    assert_eq!(o.park_at(now, 100).await, 0);
    assert_eq!(parked(o.clone()).await, 2);
    assert_eq!(ids(o.claim_at(now).await), vec![head, other]);

    // Published after its retry: the acknowledgement unparks the key.
    let due = o.claim_at(now).await;
    o.ack_at(r, &leases, &published(&due[..1]), false, now)
        .await;
    assert_eq!(parked(o.clone()).await, 0);
    assert_eq!(
        ids(o.claim_at(now).await),
        vec![behind[0], behind[1], other]
    );

    // Blocked again and parked; then a later message arrives (not parked)
    // and the block is deleted by hand: nothing of the key is claimed
    // while an earlier message of it is parked.
    let claimed = o.claim_at(now).await;
    let dead = dead_blocking(&claimed[0]);
    o.ack_at(r, &leases, &[dead], false, now).await;
    assert_eq!(o.park_at(now, 100).await, 1);
    let last = enqueue(&o, Some("k")).await;
    sqlx::query("DELETE FROM outbox_blocked_keys")
        .execute(o.pool())
        .await
        .unwrap();
    assert_eq!(ids(o.claim_at(now).await), vec![other]);
    // The next parking call finds the key free and unparks it.
    assert_eq!(o.park_at(now, 100).await, 0);
    assert_eq!(parked(o.clone()).await, 0);
    assert_eq!(ids(o.claim_at(now).await), vec![behind[1], other, last]);
}
