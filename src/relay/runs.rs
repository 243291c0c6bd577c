//! Runs of a key: what the relay sends to a publisher that keeps a key's
//! order within a call ([`Publisher::keeps_key_order`]), and what it
//! acknowledges when a run fails part way.
//!
//! [`Publisher::keeps_key_order`]: crate::Publisher::keeps_key_order

use std::time::Duration;

use super::scenarios::fails_first_attempt_of;
use super::scripted::{message, spawn, tag, until, Journal};
use super::{OrderingPolicy, RetryPolicy};
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

/// A one-bucket-per-`buckets` store holding `tags` (the key is a tag's
/// letter; `n` tags are keyless) and a journal whose publishers take runs
/// of a key, failing the first attempt of `failing` if given.
fn runs_of(buckets: i32, tags: &[&str], failing: Option<&'static str>) -> (MemoryStore, Journal) {
    let store = MemoryStore::new(buckets);
    let journal = Journal::new(&store);
    journal.runs(true);
    for t in tags {
        let key = (!t.starts_with('n')).then(|| &t[..1]);
        store.enqueue(message(t, key)).unwrap();
    }
    if let Some(f) = failing {
        journal.answer(fails_first_attempt_of(f));
    }
    (store, journal)
}

#[tokio::test(start_paused = true)]
async fn a_publisher_that_keeps_key_order_gets_each_key_as_a_run_in_one_call() {
    let (store, journal) = runs_of(4, &["a1", "a2", "b1", "a3", "n1", "b2"], None);
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
    let (store, journal) = runs_of(1, &["a1", "a2", "b1", "a3", "b2"], Some("a2"));
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
    let (store, journal) = runs_of(1, &["a1", "a2", "a3", "a4", "b1"], Some("a2"));
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
    let (store, journal) = runs_of(1, &["a1", "a2", "a3"], Some("a2"));
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
