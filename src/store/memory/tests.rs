//! The memory store keeps the contract of the real backends.

use super::*;
use crate::store::shorthand::Shorthand;
use crate::store::Disposition;

fn message(key: Option<&str>) -> NewMessage {
    let m = NewMessage::bytes("t", b"x".to_vec());
    match key {
        Some(k) => m.with_partition_key(k),
        None => m,
    }
}

fn claim_all<'a>(store: &MemoryStore, exclude: &'a [i64]) -> Claim<'a> {
    Claim {
        buckets: None,
        bucket_count: store.state().bucket_count,
        now: store.now(),
        limit: 100,
        exclude,
        max_bytes: i64::MAX,
    }
}

/// The positions of every message due at `now`, in claim order.
async fn due_at(store: &MemoryStore, now: DateTime<Utc>) -> Vec<Claimed> {
    store
        .claim(Claim {
            now,
            ..claim_all(store, &[])
        })
        .await
        .unwrap()
        .messages
}

fn ack(c: &Claimed, disposition: Disposition) -> Ack {
    Ack::of(c, disposition)
}

#[tokio::test(start_paused = true)]
async fn keys_keep_their_bucket_and_keyless_messages_spread() {
    let store = MemoryStore::new(4);
    for _ in 0..3 {
        store.enqueue(message(Some("a"))).unwrap();
    }
    for _ in 0..4 {
        store.enqueue(message(None)).unwrap();
    }
    let got = store.claim(claim_all(&store, &[])).await.unwrap();
    let a: Vec<i32> = got[..3].iter().map(|c| c.bucket).collect();
    assert!(a.iter().all(|b| *b == a[0]), "{a:?}");
    let mut keyless: Vec<i32> = got[3..].iter().map(|c| c.bucket).collect();
    keyless.sort_unstable();
    assert_eq!(keyless, vec![0, 1, 2, 3]);
    let only = [a[0]];
    let p = Claim {
        buckets: Some(&only),
        ..claim_all(&store, &[])
    };
    let in_bucket = store.claim(p).await.unwrap();
    assert!(in_bucket.iter().all(|c| c.bucket == a[0]));
    assert!(in_bucket.len() >= 3);
}

#[tokio::test(start_paused = true)]
async fn leases_expire_change_hands_and_fence_the_old_owner() {
    let store = MemoryStore::new(2);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let ttl = Duration::from_secs(2);
    let held = store
        .acquire(Acquire {
            relay: a,
            max: 5,
            ttl,
        })
        .await
        .unwrap();
    assert_eq!(held.len(), 2);
    let none = Acquire {
        relay: b,
        max: 5,
        ttl,
    };
    assert!(store.acquire(none).await.unwrap().is_empty());
    tokio::time::advance(Duration::from_secs(3)).await;
    // Expired but not taken: renewing with the same epoch still works.
    let renew = Renew {
        relay: a,
        leases: &held[..1],
        ttl,
    };
    assert_eq!(store.renew(renew).await.unwrap(), held[..1].to_vec());
    let taken = store.acquire(none).await.unwrap();
    assert_eq!(
        taken,
        vec![Lease {
            bucket: 1,
            epoch: 2
        }]
    );

    let seq = store.enqueue(message(None)).unwrap();
    let c = store.claim(claim_all(&store, &[])).await.unwrap().remove(0);
    assert_eq!(c.bucket, 1);
    let acks = [ack(&c, Disposition::Published)];
    let stale = AckBatch {
        relay: a,
        leases: &held,
        acks: &acks,
        retain: false,
        now: store.now(),
    };
    let report = store.ack(stale).await.unwrap();
    assert_eq!((report.applied, report.fenced), (0, 1));
    assert_eq!(report.fenced_buckets, vec![1]);
    assert!(store.pending_message(seq).is_some());
    let fresh = AckBatch {
        relay: b,
        leases: &taken,
        ..stale
    };
    assert_eq!(store.ack(fresh).await.unwrap().applied, 1);
    assert!(store.pending_message(seq).is_none());
}

#[tokio::test(start_paused = true)]
async fn blocks_retries_dead_letters_exclusion_and_retention() {
    let store = MemoryStore::new(1);
    let relay = Uuid::now_v7();
    let ttl = Duration::from_secs(10);
    let leases = store.acquire(Acquire { relay, max: 1, ttl }).await.unwrap();
    let a1 = store.enqueue(message(Some("a"))).unwrap();
    let a2 = store.enqueue(message(Some("a"))).unwrap();
    let b1 = store.enqueue(message(Some("b"))).unwrap();
    let now = store.now();
    let got = store.claim(claim_all(&store, &[b1])).await.unwrap();
    assert_eq!(
        got.iter().map(|c| c.message.seq).collect::<Vec<_>>(),
        vec![a1, a2]
    );
    let later = now + chrono::Duration::seconds(5);
    let acks = [ack(
        &got[0],
        Disposition::Retry {
            at: later,
            error: "down".into(),
            block_key: true,
        },
    )];
    let batch = AckBatch {
        relay,
        leases: &leases,
        acks: &acks,
        retain: true,
        now,
    };
    store.ack(batch).await.unwrap();
    // a1 is not due and blocks a2; b is free.
    let seqs = |got: Vec<Claimed>| got.iter().map(|c| c.message.seq).collect::<Vec<_>>();
    assert_eq!(seqs(due_at(&store, now).await), vec![b1]);
    let retried = due_at(&store, later).await;
    assert_eq!(seqs(retried.clone()), vec![a1, b1]);
    assert_eq!(retried[0].message.attempt, 2);
    let acks = [ack(
        &retried[0],
        Disposition::Dead {
            error: "gone".into(),
            block_key: true,
        },
    )];
    store.ack_at(relay, &leases, &acks, true, now).await;
    assert_eq!(store.dead_letters()[0].attempts, 2);
    assert_eq!(store.blocked().get("a"), Some(&a1));
    assert_eq!(seqs(due_at(&store, later).await), vec![b1]);
    assert_eq!(store.discard_dead_letters(), 1);
    let got = due_at(&store, later).await;
    assert_eq!(seqs(got.clone()), vec![a2, b1]);
    let acks: Vec<Ack> = got.iter().map(|c| ack(c, Disposition::Published)).collect();
    store.ack_at(relay, &leases, &acks, true, now).await;
    assert_eq!(store.published().len(), 2);
    let purge = Purge {
        before: now + chrono::Duration::seconds(1),
        limit: 1,
    };
    assert_eq!(store.purge_published(purge).await.unwrap(), 1);
    assert_eq!(store.purge_published(purge).await.unwrap(), 1);
    assert_eq!(store.purge_published(purge).await.unwrap(), 0);
}
