//! The relay's own rules, each driven through a real relay on the
//! in-memory store and paused time, so they run in milliseconds.

use std::collections::HashMap;
use std::time::Duration;

use super::scripted::{message, spawn, tag, until, Counters, Journal};
use super::{OrderingPolicy, RelayState};
use crate::error::PublishError;
use crate::store::memory::MemoryStore;
use crate::store::Disposition;

const LIMIT: Duration = Duration::from_secs(60);

/// Tags of everything sent, failures marked with `!`.
pub(super) fn sent_tags(journal: &Journal) -> Vec<String> {
    journal
        .sent()
        .iter()
        .map(|s| {
            let t = tag(&s.message);
            if s.ok {
                t
            } else {
                format!("{t}!")
            }
        })
        .collect()
}

/// Fails the first attempt of the message tagged `t`; confirms the rest.
pub(super) fn fails_first_attempt_of(
    t: &'static str,
) -> impl Fn(&crate::OutboxMessage) -> Result<(), PublishError> {
    move |m| {
        if tag(m) == t && m.attempt() == 1 {
            Err(PublishError::transient("destination down"))
        } else {
            Ok(())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_publisher_call_carries_one_message_per_key_in_commit_order() {
    let store = MemoryStore::new(4);
    let journal = Journal::new(&store);
    for (t, k) in [
        ("a1", Some("a")),
        ("a2", Some("a")),
        ("b1", Some("b")),
        ("a3", Some("a")),
        ("n1", None),
        ("n2", None),
        ("b2", Some("b")),
    ] {
        store.enqueue(message(t, k)).unwrap();
    }
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b);
    until("drained", LIMIT, || store.pending().is_empty()).await;

    let mut calls: HashMap<usize, Vec<String>> = HashMap::new();
    for s in journal.sent() {
        let keys = calls.entry(s.call).or_default();
        if let Some(k) = s.message.partition_key() {
            assert!(
                !keys.contains(&k.to_owned()),
                "two messages of key {k} in call {}",
                s.call
            );
            keys.push(k.to_owned());
        }
    }
    // Different keys (and keyless messages) go out together.
    assert_eq!(sent_tags(&journal)[..4], ["a1", "b1", "n1", "n2"]);
    let of = |k: &str| -> Vec<String> {
        journal
            .sent()
            .iter()
            .filter(|s| s.message.partition_key() == Some(k))
            .map(|s| tag(&s.message))
            .collect()
    };
    assert_eq!(of("a"), ["a1", "a2", "a3"]);
    assert_eq!(of("b"), ["b1", "b2"]);
}

#[tokio::test(start_paused = true)]
async fn an_ordered_failure_holds_back_the_rest_of_its_key_and_nothing_else() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    for (t, k) in [
        ("a1", "a"),
        ("a2", "a"),
        ("a3", "a"),
        ("b1", "b"),
        ("b2", "b"),
    ] {
        store.enqueue(message(t, Some(k))).unwrap();
    }
    journal.answer(fails_first_attempt_of("a1"));
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b);
    until("drained", LIMIT, || store.pending().is_empty()).await;
    assert_eq!(
        sent_tags(&journal),
        ["a1!", "b1", "b2", "a1", "a2", "a3"],
        "a2 and a3 wait for a1 within the batch and across rounds"
    );
    assert!(store.blocked().is_empty(), "a1's block was lifted");
}

#[tokio::test(start_paused = true)]
async fn an_unordered_failure_lets_the_rest_of_its_key_go_on() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    for (t, k) in [
        ("a1", "a"),
        ("a2", "a"),
        ("a3", "a"),
        ("b1", "b"),
        ("b2", "b"),
    ] {
        store.enqueue(message(t, Some(k))).unwrap();
    }
    journal.answer(fails_first_attempt_of("a1"));
    let (_relay, _gate, _) = spawn(&store, &journal, |b| {
        b.topic_ordering("t", OrderingPolicy::Unordered)
    });
    until("drained", LIMIT, || store.pending().is_empty()).await;
    assert_eq!(
        sent_tags(&journal),
        ["a1!", "b1", "a2", "b2", "a3", "a1"],
        "the failure is set aside and the key moves on"
    );
}

#[tokio::test(start_paused = true)]
async fn a_prefetched_batch_never_overtakes_an_unpublished_message_of_its_key() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    let mut seq = HashMap::new();
    for (t, k) in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b")] {
        seq.insert(t, store.enqueue(message(t, Some(k))).unwrap());
    }
    journal.answer(fails_first_attempt_of("a1"));
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b.batch_size(2));
    until("drained", LIMIT, || store.pending().is_empty()).await;

    // The early claim ran while a1 was in flight and did hand out a2: only
    // the relay's own filter kept it back.
    assert!(
        store
            .claims()
            .iter()
            .any(|c| c.exclude.contains(&seq["a1"]) && c.got.contains(&seq["a2"])),
        "{:?}",
        store.claims()
    );
    assert_eq!(sent_tags(&journal), ["a1!", "b1", "b2", "a1", "a2"]);
}

#[tokio::test(start_paused = true)]
async fn an_acknowledgement_after_the_lease_changed_hands_is_refused_and_counted() {
    let counters = Counters::default();
    let _recorder = metrics::set_default_local_recorder(&counters);
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    let a1 = store.enqueue(message("a1", Some("a"))).unwrap();
    // Too short for a renewal to notice the takeover before the ack.
    journal.delay(|_| Duration::from_millis(100));
    let (relay, _gate, id) = spawn(&store, &journal, |b| b);
    journal.calls(1).await;
    store.take_over(0, Duration::from_secs(3600));
    until("acknowledged", LIMIT, || !store.acks().is_empty()).await;

    let ack = &store.acks()[0];
    assert_eq!(ack.relay, id);
    assert_eq!(
        (ack.report.applied, ack.report.fenced),
        (0, 1),
        "{:?}",
        ack.report
    );
    assert_eq!(ack.report.fenced_buckets, vec![0]);
    let pending = store.pending_message(a1).expect("still pending");
    assert_eq!(pending.attempts, 0);
    assert_eq!(counters.get("outbox_fenced_total"), 1);
    assert_eq!(counters.get("outbox_published_total"), 0);
    assert_eq!(relay.health().published, 0);
    assert!(store.fencing_violations().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_relay_that_lost_a_bucket_mid_batch_publishes_nothing_more_of_it() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    for t in ["a1", "a2", "a3"] {
        store.enqueue(message(t, Some("a"))).unwrap();
    }
    // Long enough for a renewal (every third of the 2 s lease) mid-call.
    journal.delay(|_| Duration::from_secs(1));
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b);
    journal.calls(1).await;
    store.take_over(0, Duration::from_secs(3600));
    until("acknowledged", LIMIT, || !store.acks().is_empty()).await;
    tokio::time::sleep(Duration::from_secs(10)).await;

    assert_eq!(
        sent_tags(&journal),
        ["a1"],
        "a2 and a3 belong to the new owner"
    );
    let acks = store.acks();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].acks.len(), 1);
    assert_eq!(acks[0].report.fenced, 1);
    assert_eq!(store.pending().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_then_dead_letter_and_block_the_key() {
    let counters = Counters::default();
    let _recorder = metrics::set_default_local_recorder(&counters);
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    let a1 = store.enqueue(message("a1", Some("a"))).unwrap();
    store.enqueue(message("a2", Some("a"))).unwrap();
    journal.answer(|m| {
        if tag(m) == "a1" {
            Err(PublishError::transient("destination down"))
        } else {
            Ok(())
        }
    });
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b);
    until("dead-lettered", LIMIT, || !store.dead_letters().is_empty()).await;

    let delays: Vec<Option<chrono::Duration>> = store
        .acks()
        .iter()
        .flat_map(|r| r.acks.iter().map(move |a| (r.now, a.clone())))
        .filter(|(_, a)| a.seq == a1)
        .map(|(now, a)| match a.disposition {
            Disposition::Retry { at, .. } => Some(at - now),
            _ => None,
        })
        .collect();
    let ms = chrono::Duration::milliseconds;
    assert_eq!(delays, vec![Some(ms(100)), Some(ms(200)), None]);
    let times: Vec<_> = journal.sent().iter().map(|s| s.at).collect();
    assert_eq!(times.len(), 3, "{:?}", sent_tags(&journal));
    assert!(times[1] - times[0] >= Duration::from_millis(100));
    assert!(times[2] - times[1] >= Duration::from_millis(200));

    let dead = &store.dead_letters()[0];
    assert_eq!(dead.message.seq, a1);
    assert_eq!(dead.attempts, 3);
    assert!(
        dead.last_error.contains("destination down"),
        "{}",
        dead.last_error
    );
    assert_eq!(counters.get("outbox_retried_total"), 2);
    assert_eq!(counters.get("outbox_dead_lettered_total"), 1);

    // The dead letter holds a2 back until it is discarded.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(journal.confirmed(), Vec::<String>::new());
    assert_eq!(store.discard_dead_letters(), 1);
    until("drained", LIMIT, || store.pending().is_empty()).await;
    assert_eq!(journal.confirmed(), ["a2"]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_replaces_the_backoff_and_permanent_failures_dead_letter_at_once() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    let a1 = store.enqueue(message("a1", Some("a"))).unwrap();
    let b1 = store.enqueue(message("b1", Some("b"))).unwrap();
    journal.answer(|m| match (tag(m).as_str(), m.attempt()) {
        // Longer than the policy's 1 s cap: the destination knows best.
        ("a1", 1) => Err(PublishError::transient("busy").with_retry_after(Duration::from_secs(5))),
        ("b1", _) => Err(PublishError::permanent("rejected")),
        _ => Ok(()),
    });
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b);
    until("acknowledged", LIMIT, || !store.acks().is_empty()).await;
    let first = &store.acks()[0];
    for a in &first.acks {
        match &a.disposition {
            Disposition::Retry { at, block_key, .. } => {
                assert_eq!(a.seq, a1);
                assert_eq!(*at - first.now, chrono::Duration::seconds(5));
                assert!(block_key);
            }
            Disposition::Dead { block_key, .. } => {
                assert_eq!(a.seq, b1);
                assert!(block_key);
            }
            Disposition::Published => panic!("nothing was published"),
        }
    }
    let failed_at = journal.sent()[0].at;
    until("drained", LIMIT, || store.pending().is_empty()).await;
    let retried = journal.sent().into_iter().find(|s| s.ok).expect("a1 again");
    assert!(retried.at - failed_at >= Duration::from_secs(5));
    assert_eq!(store.dead_letters()[0].attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn each_key_is_numbered_densely_across_batches() {
    let store = MemoryStore::new(2);
    let journal = Journal::new(&store);
    for (t, k) in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("a3", "a")] {
        store.enqueue(message(t, Some(k))).unwrap();
    }
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b.batch_size(2).key_sequences(true));
    until("drained", LIMIT, || store.pending().is_empty()).await;
    let numbers: Vec<(String, Option<i64>)> = journal
        .sent()
        .iter()
        .map(|s| (tag(&s.message), s.message.key_sequence()))
        .collect();
    for (t, n) in [("a1", 1), ("b1", 1), ("a2", 2), ("a3", 3)] {
        assert!(numbers.contains(&(t.to_owned(), Some(n))), "{numbers:?}");
    }
    assert_eq!(store.key_sequence("a"), Some(3));
    assert_eq!(store.key_sequence("b"), Some(1));
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_batch_in_flight_and_gives_the_buckets_back() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    store.enqueue(message("a1", Some("a"))).unwrap();
    journal.delay(|_| Duration::from_secs(5));
    let (relay, _gate, id) = spawn(&store, &journal, |b| b);
    journal.calls(1).await;
    assert_eq!(store.holder(0), Some(id));
    let health = relay.watch_health();
    relay.shutdown().await.unwrap();
    assert!(
        store.pending().is_empty(),
        "the batch in flight was acknowledged"
    );
    assert_eq!(store.holder(0), None, "the bucket is free at once");
    assert_eq!(health.borrow().state, RelayState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_relay_without_buckets_stands_by_and_takes_over_when_the_holder_leaves() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    let (first, _g1, first_id) = spawn(&store, &journal, |b| b);
    until(
        "the first relay holds the bucket",
        Duration::from_secs(5),
        || store.holder(0) == Some(first_id),
    )
    .await;
    let (second, _g2, second_id) = spawn(&store, &journal, |b| b);
    let health = second.watch_health();
    until("the second relay stands by", Duration::from_secs(5), || {
        health.borrow().state == RelayState::StandingBy
    })
    .await;
    assert_eq!(health.borrow().leased_buckets, 0);
    first.shutdown().await.unwrap();
    store.enqueue(message("a1", Some("a"))).unwrap();
    until(
        "the second relay publishes",
        Duration::from_secs(10),
        || journal.confirmed() == vec!["a1".to_owned()],
    )
    .await;
    assert_eq!(store.holder(0), Some(second_id));
    assert_eq!(health.borrow().state, RelayState::Running);
    second.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_the_call_in_flight_finish_and_makes_no_other() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    let mut seq = Vec::new();
    for t in ["a1", "a2", "a3"] {
        seq.push(store.enqueue(message(t, Some("a"))).unwrap());
    }
    journal.delay(|_| Duration::from_secs(1));
    let (relay, _gate, _) = spawn(&store, &journal, |b| b);
    journal.calls(1).await;
    let asked = tokio::time::Instant::now();
    relay.shutdown().await.expect("relay task");
    assert_eq!(
        tokio::time::Instant::now() - asked,
        Duration::from_secs(1),
        "no longer than the call in flight"
    );
    assert_eq!(journal.confirmed(), ["a1"], "a2 and a3 were not sent");
    assert!(store.pending_message(seq[0]).is_none(), "a1 acknowledged");
    for s in &seq[1..] {
        assert_eq!(store.pending_message(*s).map(|p| p.attempts), Some(0));
    }
    assert_eq!(store.holder(0), None);
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_a_publisher_call_that_outlives_the_grace_period() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    let mut seq = HashMap::new();
    for (t, k) in [("a1", "a"), ("b1", "b"), ("a2", "a")] {
        seq.insert(t, store.enqueue(message(t, Some(k))).unwrap());
    }
    // The first wave (a1, b1) is confirmed at once; the second (a2) never
    // returns.
    journal.delay(|call| {
        if call == 1 {
            Duration::MAX
        } else {
            Duration::ZERO
        }
    });
    let grace = Duration::from_secs(3);
    let (relay, _gate, id) = spawn(&store, &journal, |b| b.shutdown_grace(grace));
    journal.calls(2).await;
    let health = relay.watch_health();
    let asked = tokio::time::Instant::now();
    let stopping = tokio::spawn(relay.shutdown());

    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = health.borrow().clone();
    assert_eq!(during.state, RelayState::Stopping, "{during:?}");
    assert_eq!(during.leased_buckets, 1, "still held while stopping");
    tokio::time::timeout(Duration::from_secs(60), stopping)
        .await
        .expect("a publisher that never returns holds the shutdown")
        .expect("shutdown task")
        .expect("relay task");
    assert_eq!(
        tokio::time::Instant::now() - asked,
        grace,
        "the call got its grace period, and no more"
    );

    assert!(store.pending_message(seq["a1"]).is_none());
    assert!(store.pending_message(seq["b1"]).is_none());
    assert_eq!(
        store.pending_message(seq["a2"]).map(|p| p.attempts),
        Some(0),
        "the abandoned call's message stays pending, unacknowledged"
    );
    assert!(store
        .acks()
        .iter()
        .filter(|r| r.relay == id)
        .all(|r| r.acks.iter().all(|a| a.seq != seq["a2"])));
    assert_eq!(store.holder(0), None, "the bucket is free at once");
    let after = health.borrow().clone();
    assert_eq!(
        (after.state, after.leased_buckets),
        (RelayState::Stopped, 0)
    );

    // The next relay publishes it (again: the destination may have it).
    let (_next, _g, _) = spawn(&store, &journal, |b| b);
    until("drained", LIMIT, || store.pending().is_empty()).await;
    assert_eq!(journal.confirmed(), ["a1", "b1", "a2", "a2"]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_when_the_store_stops_answering() {
    // (when the store stops answering, grace, whether a call is in flight)
    let cases = [
        ("before start-up", Duration::from_secs(3), false),
        ("while idle", Duration::from_secs(10), false),
        ("during a publisher call", Duration::from_secs(3), true),
    ];
    for (when, grace, in_flight) in cases {
        let store = MemoryStore::new(1);
        let journal = Journal::new(&store);
        let a1 = store.enqueue(message("a1", Some("a"))).unwrap();
        journal.delay(|_| Duration::from_secs(1));
        let relay = uuid::Uuid::now_v7();
        let (handle, gate) = store.for_relay(relay);
        if when == "before start-up" {
            gate.close();
        }
        let tuned = super::scripted::builder(handle, &journal, relay);
        // The default grace is the one a relay stops with unless told.
        let tuned = if grace == Duration::from_secs(10) {
            tuned
        } else {
            tuned.shutdown_grace(grace)
        };
        let running = tuned.spawn().expect("valid settings");
        let health = running.watch_health();
        if when == "while idle" {
            until("published", LIMIT, || store.pending().is_empty()).await;
            gate.close();
        }
        if in_flight {
            journal.calls(1).await;
            // The call returns after 1 s; its acknowledgement never does.
            gate.close();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let asked = tokio::time::Instant::now();
        let bound = grace + Duration::from_secs(2);
        tokio::time::timeout(bound + Duration::from_secs(1), running.shutdown())
            .await
            .unwrap_or_else(|_| panic!("{when}: shutdown still waiting after {bound:?}"))
            .expect("relay task");
        let took = tokio::time::Instant::now() - asked;
        assert!(took <= bound, "{when}: shutdown took {took:?}");
        assert_eq!(health.borrow().state, RelayState::Stopped, "{when}");
        if in_flight {
            assert!(
                store.pending_message(a1).is_some(),
                "{when}: not acknowledged"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_publisher_call_that_outlives_a_stalled_lease_is_abandoned_and_never_acknowledged() {
    let counters = Counters::default();
    let _recorder = metrics::set_default_local_recorder(&counters);
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    let a1 = store.enqueue(message("a1", Some("a"))).unwrap();
    store.enqueue(message("a2", Some("a"))).unwrap();
    // The first relay's call outlives its 2 s lease and would confirm a1.
    journal.delay(|call| {
        if call == 0 {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        }
    });
    let (first, gate, first_id) = spawn(&store, &journal, |b| b);
    journal.calls(1).await;
    // Its renewals hang from now on: the lease expires in the store.
    gate.close();
    let (_second, _g, second_id) = spawn(&store, &journal, |b| b);
    until("the second relay publishes", LIMIT, || {
        store.pending().is_empty()
    })
    .await;
    // The first relay stopped waiting at its lease deadline, although its
    // renewal still hangs.
    assert_eq!(counters.get("outbox_abandoned_calls_total"), 1);
    // It comes back after its call would have returned.
    tokio::time::sleep(Duration::from_secs(6)).await;
    gate.open();
    tokio::time::sleep(Duration::from_secs(10)).await;

    let by_first: Vec<_> = store
        .acks()
        .into_iter()
        .filter(|a| a.relay == first_id)
        .collect();
    assert!(
        by_first.iter().all(|r| r.acks.iter().all(|a| a.seq != a1)),
        "the abandoned call's a1 was acknowledged: {by_first:?}"
    );
    let published: Vec<(uuid::Uuid, i64)> = store.acked_published();
    assert!(
        published.iter().all(|(r, _)| *r == second_id),
        "{published:?}"
    );
    assert_eq!(
        journal
            .sent()
            .iter()
            .filter(|s| s.relay == second_id && s.ok)
            .map(|s| tag(&s.message))
            .collect::<Vec<_>>(),
        ["a1", "a2"]
    );
    assert!(store.fencing_violations().is_empty());
    first.shutdown().await.expect("relay task");
}

#[tokio::test(start_paused = true)]
async fn a_publisher_call_still_running_when_a_lost_lease_runs_out_is_abandoned() {
    let counters = Counters::default();
    let _recorder = metrics::set_default_local_recorder(&counters);
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    let a1 = store.enqueue(message("a1", Some("a"))).unwrap();
    journal.delay(|_| Duration::from_secs(5));
    let (relay, _gate, id) = spawn(&store, &journal, |b| b);
    journal.calls(1).await;
    let lost_at = tokio::time::Instant::now();
    // Renewals go on and find the bucket taken.
    store.take_over(0, Duration::from_secs(3600));
    until("the call is abandoned", LIMIT, || {
        counters.get("outbox_abandoned_calls_total") == 1
    })
    .await;
    // At the deadline of the lease it was made under (80 % of 2 s), not
    // when the call would have returned.
    assert!(tokio::time::Instant::now() - lost_at < Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        store
            .acks()
            .iter()
            .all(|r| r.relay != id || r.acks.iter().all(|a| a.seq != a1)),
        "{:?}",
        store.acks()
    );
    assert_eq!(store.pending_message(a1).map(|p| p.attempts), Some(0));
    assert_eq!(relay.health().published, 0);
    relay.shutdown().await.expect("relay task");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_publisher_fails_its_call_transiently_and_is_logged_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// Panics on its first call, then confirms everything.
    #[derive(Debug, Default)]
    struct PanicsOnce(AtomicUsize);

    #[async_trait::async_trait]
    impl crate::Publisher for PanicsOnce {
        async fn publish(&self, batch: &[crate::OutboxMessage]) -> Vec<Result<(), PublishError>> {
            if self.0.fetch_add(1, Ordering::Relaxed) == 0 {
                panic!("boom from the publisher");
            }
            batch.iter().map(|_| Ok(())).collect()
        }
    }

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Log {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let store = MemoryStore::new(1);
    let a1 = store.enqueue(message("a1", Some("a"))).unwrap();
    let relay = uuid::Uuid::now_v7();
    let (handle, _gate) = store.for_relay(relay);
    let running = super::Relay::builder(handle, PanicsOnce::default())
        .relay_id(relay)
        .lease_ttl(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(100))
        .retry(
            super::RetryPolicy::new()
                .initial_delay(Duration::from_millis(100))
                .jitter(false),
        )
        .spawn()
        .expect("valid settings");
    until("published", LIMIT, || store.pending().is_empty()).await;
    running.shutdown().await.expect("the relay survived");

    let acks = store.acks();
    match &acks[0].acks[0].disposition {
        Disposition::Retry { error, .. } => {
            assert!(error.contains("boom from the publisher"), "{error}");
        }
        d => panic!("a panic is a transient failure, not {d:?}"),
    }
    assert!(store
        .acked_published()
        .iter()
        .any(|(r, s)| *r == relay && *s == a1));
    let text = String::from_utf8(log.0.lock().expect("poisoned").clone()).expect("utf-8");
    assert_eq!(
        text.matches("the publisher panicked").count(),
        1,
        "reported once: {text}"
    );
    assert!(text.contains("boom from the publisher"), "{text}");
}

/// A relay whose every publish fails says so in its health (not
/// `Running`, with the publisher's error) while the database is fine; one
/// success brings it back, and a minute without failures too.
#[tokio::test(start_paused = true)]
async fn a_relay_whose_every_publish_fails_is_not_running() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    journal.answer(|_| Err(PublishError::transient("broker refused the connection")));
    store.enqueue(message("a1", Some("a"))).unwrap();
    store.enqueue(message("b1", Some("b"))).unwrap();
    let (relay, _gate, _) = spawn(&store, &journal, |b| b);
    until("failing", LIMIT, || {
        relay.health().state == RelayState::PublishFailing
    })
    .await;
    let h = relay.health();
    assert!(
        h.last_error
            .as_deref()
            .is_some_and(|e| e.contains("broker refused the connection")),
        "{h:?}"
    );
    assert_eq!(h.published, 0);

    // The broker is back: the retries go through and the state clears.
    journal.answer(|_| Ok(()));
    until("drained", LIMIT * 10, || store.pending().is_empty()).await;
    until("running", LIMIT, || {
        relay.health().state == RelayState::Running
    })
    .await;
    assert_eq!(relay.health().last_error, None);

    // A poison message alone fails its attempts: failing, until a minute
    // passes without a failure (it is dead-lettered after its attempts).
    journal.answer(|m| {
        if tag(m) == "p1" {
            Err(PublishError::permanent("schema rejected"))
        } else {
            Ok(())
        }
    });
    store.enqueue(message("p1", Some("p"))).unwrap();
    until("failing again", LIMIT, || {
        relay.health().state == RelayState::PublishFailing
    })
    .await;
    until("dead-lettered", LIMIT, || store.pending().is_empty()).await;
    assert_eq!(relay.health().state, RelayState::PublishFailing);
    tokio::time::sleep(Duration::from_secs(61)).await;
    until("running after the window", LIMIT, || {
        relay.health().state == RelayState::Running
    })
    .await;
    relay.shutdown().await.expect("relay task");
}
