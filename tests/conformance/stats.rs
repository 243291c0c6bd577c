//! What `stats()` says about the outbox: pending messages split into
//! ready, waiting for a retry, and parked behind a blocked key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outbox::{InMemoryPublisher, PublishError};

use crate::backend::{Backend, TestOutbox};
use crate::messages::{judged, keyed};
use crate::support::wait_for;

const TIMEOUT: Duration = Duration::from_secs(10);

/// `stats_and_topics` says what `stats` and `topic_stats` say, read apart
/// (on an outbox nothing changes meanwhile).
async fn figures_agree<B: Backend>(outbox: &B::Outbox) {
    let (stats, topics) = outbox.stats_and_topics().await.unwrap();
    let alone = outbox.stats().await.unwrap();
    let counts = |s: &outbox::StoreStats| {
        (
            s.pending,
            s.ready,
            s.retry_waiting,
            s.parked,
            s.dead_letters,
            s.last_position,
            s.oldest_pending_age.is_some(),
        )
    };
    assert_eq!(counts(&stats), counts(&alone), "{stats:?} / {alone:?}");
    let per_topic = |t: &[outbox::TopicStats]| -> Vec<_> {
        t.iter()
            .map(|t| (t.topic.clone(), t.pending, t.oldest_created_at))
            .collect()
    };
    let topics_alone = outbox.topic_stats().await.unwrap();
    assert_eq!(per_topic(&topics), per_topic(&topics_alone));
}

/// One key's head waits an hour for its retry and blocks the key's second
/// message; another key, of another topic, publishes. Pending is 2, but
/// nothing is ready: a caller waiting for `pending == 0` would wait an
/// hour, one waiting for `ready == 0` would not. The figures are the
/// outbox's, whatever the topics.
pub async fn stats_tell_ready_retry_waiting_and_parked_apart<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let empty = outbox.stats().await.unwrap();
    assert_eq!(
        (empty.pending, empty.ready, empty.oldest_pending_age),
        (0, 0, None),
        "{empty:?}"
    );
    figures_agree::<B>(&outbox).await;
    // The oldest message, of the later topic, a second before the rest.
    outbox.enqueue_alone(keyed("u", "j", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let head = outbox.enqueue_id(keyed("t", "k", 1)).await;
    outbox.enqueue_alone(keyed("t", "k", 2)).await.unwrap();

    let fresh = outbox.stats().await.unwrap();
    assert_eq!(
        (
            fresh.pending,
            fresh.ready,
            fresh.retry_waiting,
            fresh.parked
        ),
        (3, 3, 0, 0),
        "{fresh:?}"
    );
    assert!(
        fresh
            .oldest_pending_age
            .is_some_and(|a| a >= Duration::from_secs(1)),
        "the oldest of all topics: {fresh:?}"
    );
    // Three positions assigned on a fresh database: the third is the last.
    assert_eq!(fresh.last_position, Some(3), "{fresh:?}");
    figures_agree::<B>(&outbox).await;

    let published = InMemoryPublisher::new();
    let publisher = judged(&published, move |m| {
        (m.id() == head).then(|| {
            PublishError::transient(std::io::Error::other("busy"))
                .with_retry_after(Duration::from_secs(3600))
        })
    });
    let relay = outbox.fast_relay(publisher).spawn().unwrap();
    wait_for("the head to wait for its retry", TIMEOUT, || async {
        let s = outbox.stats().await.unwrap();
        s.retry_waiting == 1 && s.pending == 2
    })
    .await;
    relay.shutdown().await.unwrap();
    let s = outbox.stats().await.unwrap();
    assert_eq!(
        (
            s.pending,
            s.ready,
            s.retry_waiting,
            s.parked,
            s.dead_letters
        ),
        (2, 0, 1, 1, 0),
        "{s:?}"
    );
    assert_eq!(published.messages().len(), 1, "the other key went on");
    // Publishing does not move the high-water mark; it outlives the rows.
    assert_eq!(s.last_position, Some(3), "{s:?}");
    figures_agree::<B>(&outbox).await;
    db.close().await;
}

/// Pending messages per topic, and the relays with their leases: a relay
/// whose every publish fails says so, with the publisher's error, to
/// anyone reading the relays (another process, `outbox status`), and stops
/// saying so once publishing works again; a relay that stops is forgotten.
pub async fn topics_and_relays_tell_who_is_behind_and_who_cannot_publish<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    assert!(outbox.topic_stats().await.unwrap().is_empty());
    assert!(outbox.relays().await.unwrap().is_empty());
    let before = chrono::Utc::now() - chrono::Duration::seconds(60);
    for (topic, key, n) in [("mail", "m", 1), ("orders", "a", 1), ("orders", "b", 1)] {
        outbox.enqueue_alone(keyed(topic, key, n)).await.unwrap();
    }
    let topics = outbox.topic_stats().await.unwrap();
    let counts: Vec<(&str, i64)> = topics
        .iter()
        .map(|t| (t.topic.as_str(), t.pending))
        .collect();
    assert_eq!(counts, [("mail", 1), ("orders", 2)]);
    assert!(topics.iter().all(|t| t.oldest_created_at > before));

    let refusing = Arc::new(AtomicBool::new(true));
    let published = InMemoryPublisher::new();
    let publisher = {
        let refusing = refusing.clone();
        judged(&published, move |_| {
            refusing
                .load(Ordering::SeqCst)
                .then(|| PublishError::transient(std::io::Error::other("broker refused")))
        })
    };
    let id = uuid::Uuid::now_v7();
    let relay = outbox.fast_relay(publisher).relay_id(id).spawn().unwrap();
    wait_for(
        "the relay's heartbeat to carry the publish error",
        TIMEOUT,
        || async {
            outbox.relays().await.unwrap().iter().any(|r| {
                r.relay == id
                    && r.alive
                    && r.leases > 0
                    && r.publish_error
                        .as_deref()
                        .is_some_and(|e| e.contains("broker refused"))
            })
        },
    )
    .await;
    refusing.store(false, Ordering::SeqCst);
    wait_for(
        "everything published and the error cleared",
        TIMEOUT * 3,
        || async {
            outbox.pending().await == 0
                && outbox
                    .relays()
                    .await
                    .unwrap()
                    .iter()
                    .any(|r| r.relay == id && r.publish_error.is_none())
        },
    )
    .await;
    assert!(outbox.topic_stats().await.unwrap().is_empty());
    relay.shutdown().await.unwrap();
    assert!(outbox.relays().await.unwrap().iter().all(|r| r.relay != id));
    db.close().await;
}
