//! What `stats()` says about the outbox: pending messages split into
//! ready, waiting for a retry, and parked behind a blocked key.

use std::time::Duration;

use outbox::{InMemoryPublisher, PublishError};

use crate::backend::{Backend, TestOutbox};
use crate::messages::{judged, keyed};
use crate::support::wait_for;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One key's head waits an hour for its retry and blocks the key's second
/// message; another key publishes. Pending is 2, but nothing is ready: a
/// caller waiting for `pending == 0` would wait an hour, one waiting for
/// `ready == 0` would not.
pub async fn stats_tell_ready_retry_waiting_and_parked_apart<B: Backend>() {
    let db = B::fresh().await;
    let outbox = db.outbox();
    let head = outbox.enqueue_id(keyed("t", "k", 1)).await;
    outbox.enqueue_alone(keyed("t", "k", 2)).await.unwrap();
    outbox.enqueue_alone(keyed("t", "j", 1)).await.unwrap();

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
    assert!(fresh.oldest_pending_age.is_some());

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
    db.close().await;
}
