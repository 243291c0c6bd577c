//! Runs of a key: what the relay sends to a publisher that keeps a key's
//! order within a call ([`Publisher::keeps_key_order`]), and what it
//! acknowledges when a run fails part way.
//!
//! [`Publisher::keeps_key_order`]: crate::Publisher::keeps_key_order

use std::time::Duration;

use super::scripted::{message, spawn, tag, until, Journal};
use super::{OrderingPolicy, RetryPolicy};
use crate::error::PublishError;
use crate::store::memory::MemoryStore;

const LIMIT: Duration = Duration::from_secs(60);

/// Tags of each publisher call's messages, failures marked with `!`.
fn calls(journal: &Journal) -> Vec<Vec<String>> {
    let mut calls: Vec<Vec<String>> = Vec::new();
    let mut last = None;
    for s in journal.sent() {
        if last != Some(s.call) {
            calls.push(Vec::new());
            last = Some(s.call);
        }
        let t = tag(&s.message);
        calls
            .last_mut()
            .expect("pushed")
            .push(if s.ok { t } else { format!("{t}!") });
    }
    calls
}

fn enqueue_all(store: &MemoryStore, messages: &[(&str, Option<&str>)]) {
    for (t, k) in messages {
        store.enqueue(message(t, *k)).unwrap();
    }
}

/// Fails the first attempt of `failing`; confirms everything else, even a
/// message sent behind a failure of its key (a publisher breaking its
/// promise).
fn fails_first_attempt_of(
    failing: &'static str,
) -> impl Fn(&crate::OutboxMessage) -> Result<(), PublishError> {
    move |m| {
        if tag(m) == failing && m.attempt() == 1 {
            Err(PublishError::transient("destination down"))
        } else {
            Ok(())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_publisher_that_keeps_key_order_gets_each_key_as_a_run_in_one_call() {
    let store = MemoryStore::new(4);
    let journal = Journal::new(&store);
    journal.runs(true);
    enqueue_all(
        &store,
        &[
            ("a1", Some("a")),
            ("a2", Some("a")),
            ("b1", Some("b")),
            ("a3", Some("a")),
            ("n1", None),
            ("b2", Some("b")),
        ],
    );
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b);
    until("drained", LIMIT, || store.pending().is_empty()).await;
    assert_eq!(
        calls(&journal),
        [["a1", "a2", "b1", "a3", "n1", "b2"]],
        "one call, in position order"
    );
}

#[tokio::test(start_paused = true)]
async fn an_ordered_failure_in_a_run_leaves_the_rest_of_the_key_pending_whatever_its_results() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    journal.runs(true);
    enqueue_all(
        &store,
        &[
            ("a1", Some("a")),
            ("a2", Some("a")),
            ("b1", Some("b")),
            ("a3", Some("a")),
            ("b2", Some("b")),
        ],
    );
    journal.answer(fails_first_attempt_of("a2"));
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b);
    until("drained", LIMIT, || store.pending().is_empty()).await;
    // a3 was reported sent behind a2's failure: not acknowledged, sent
    // again behind a2's retry. The other key went through at once.
    let calls = calls(&journal);
    assert_eq!(calls[0], ["a1", "a2!", "b1", "a3", "b2"]);
    assert_eq!(calls[1..].concat(), ["a2", "a3"]);
    assert!(store.blocked().is_empty(), "a2's block was lifted");
}

#[tokio::test(start_paused = true)]
async fn an_unordered_failure_in_a_run_sends_the_rest_of_the_key_next_round() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    journal.runs(true);
    enqueue_all(
        &store,
        &[
            ("a1", Some("a")),
            ("a2", Some("a")),
            ("a3", Some("a")),
            ("a4", Some("a")),
            ("b1", Some("b")),
        ],
    );
    journal.answer(fails_first_attempt_of("a2"));
    // Nothing wakes the relay before a2's retry, 10 s away (no poll, no
    // lease renewal), but for the messages it held back.
    let (_relay, _gate, _) = spawn(&store, &journal, |b| {
        b.topic_ordering("t", OrderingPolicy::Unordered)
            .poll_interval(Duration::from_secs(30))
            .lease_ttl(Duration::from_secs(60))
            .retry(
                RetryPolicy::new()
                    .initial_delay(Duration::from_secs(10))
                    .jitter(false),
            )
    });
    until("drained", LIMIT, || store.pending().is_empty()).await;
    let calls = calls(&journal);
    assert_eq!(calls[0], ["a1", "a2!", "a3", "a4", "b1"]);
    // a3 and a4 were held back by the relay and go on at once, without
    // waiting for a2's retry, as the unordered policy lets them.
    assert_eq!(calls[1..], [vec!["a3", "a4"], vec!["a2"]]);
    let sent = journal.sent();
    let first = sent[0].at;
    let a3 = sent.iter().rfind(|s| tag(&s.message) == "a3").unwrap().at;
    assert!(
        a3 - first < Duration::from_millis(100),
        "held back messages waited {:?}",
        a3 - first
    );
}

#[tokio::test(start_paused = true)]
async fn an_unordered_failure_in_a_run_spends_its_number() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    journal.runs(true);
    enqueue_all(
        &store,
        &[("a1", Some("a")), ("a2", Some("a")), ("a3", Some("a"))],
    );
    journal.answer(fails_first_attempt_of("a2"));
    let (_relay, _gate, _) = spawn(&store, &journal, |b| {
        b.topic_ordering("t", OrderingPolicy::Unordered)
            .key_sequences(true)
    });
    until("drained", LIMIT, || store.pending().is_empty()).await;
    let numbered: Vec<(String, i64)> = journal
        .sent()
        .iter()
        .map(|s| {
            let t = if s.ok {
                tag(&s.message)
            } else {
                format!("{}!", tag(&s.message))
            };
            (t, s.message.key_sequence().unwrap())
        })
        .collect();
    // a2 may have reached the destination as 2 before it failed: 2 is
    // never given to another message, and a2 comes back with a higher one.
    let want: Vec<(String, i64)> = [("a1", 1), ("a2!", 2), ("a3", 3), ("a3", 3), ("a2", 4)]
        .iter()
        .map(|(t, n)| ((*t).to_owned(), *n))
        .collect();
    assert_eq!(numbered, want);
}
