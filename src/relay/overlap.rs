//! A batch's acknowledgement written while the next batch is published:
//! that it overlaps, and that a key's order survives the early claims made
//! while it is in flight.

use std::collections::HashMap;
use std::time::Duration;

use super::scenarios::{fails_first_attempt_of, sent_tags as sent};
use super::scripted::{message, spawn, until, Journal};
use crate::store::memory::MemoryStore;

const LIMIT: Duration = Duration::from_secs(60);

/// A one-bucket store holding `tags` (a tag's letter is its key) whose
/// acknowledgements each take 200 ms, and its journal.
fn slow_acks(tags: &[&'static str]) -> (MemoryStore, Journal, HashMap<&'static str, i64>) {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    let mut seq = HashMap::new();
    for &t in tags {
        seq.insert(t, store.enqueue(message(t, Some(&t[..1]))).unwrap());
    }
    store.set_ack_delay(Duration::from_millis(200));
    (store, journal, seq)
}

#[tokio::test(start_paused = true)]
async fn the_next_batch_is_published_while_the_last_one_is_acknowledged() {
    let (store, journal, _) = slow_acks(&["a1", "b1", "c1", "d1", "e1", "f1"]);
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b.batch_size(2));
    journal.calls(2).await;
    assert!(
        store.acks().is_empty(),
        "the second call waited for the first acknowledgement: {:?}",
        store.acks()
    );
    until("drained", LIMIT, || store.pending().is_empty()).await;
    assert_eq!(sent(&journal), ["a1", "b1", "c1", "d1", "e1", "f1"]);
    // Each batch acknowledged once, in order.
    let acked: Vec<Vec<String>> = store
        .acks()
        .iter()
        .map(|a| {
            a.acks
                .iter()
                .map(|k| k.partition_key.clone().unwrap_or_default())
                .collect()
        })
        .collect();
    assert_eq!(acked, [["a", "b"], ["c", "d"], ["e", "f"]]);
}

#[tokio::test(start_paused = true)]
async fn a_claim_made_while_a_failure_is_being_acknowledged_never_overtakes_it() {
    // Batches of two: [a1 b1], then [c1 d1], claimed before a1 failed; the
    // claim after them runs while [a1 b1]'s acknowledgement (a1's retry)
    // is still in flight, so the store hands out a2.
    let (store, journal, seq) = slow_acks(&["a1", "b1", "c1", "d1", "e1", "a2", "f1", "g1"]);
    journal.answer(fails_first_attempt_of("a1"));
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b.batch_size(2));
    until("drained", LIMIT, || store.pending().is_empty()).await;

    assert!(
        store.claims().iter().any(|c| {
            c.exclude.contains(&seq["a1"])
                && c.exclude.contains(&seq["c1"])
                && c.got.contains(&seq["a2"])
        }),
        "no claim ran over both batches in flight and handed out a2: {:?}",
        store.claims()
    );
    let a: Vec<String> = sent(&journal)
        .into_iter()
        .filter(|t| t.starts_with('a'))
        .collect();
    assert_eq!(a, ["a1!", "a1", "a2"], "{:?}", sent(&journal));
}

#[tokio::test(start_paused = true)]
async fn a_failed_acknowledgement_leaves_the_next_batch_unacknowledged_too() {
    // [a1] goes out and its acknowledgement fails while [a2], claimed
    // early, goes out: acknowledging a2 alone would leave a1 to be
    // delivered again after it.
    let (store, journal, _) = slow_acks(&["a1", "a2", "b1"]);
    store.fail_acks(1);
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b.batch_size(1));
    until("drained", LIMIT, || store.pending().is_empty()).await;
    let a: Vec<String> = sent(&journal)
        .into_iter()
        .filter(|t| t.starts_with('a'))
        .collect();
    assert_eq!(a, ["a1", "a2", "a1", "a2"], "{:?}", sent(&journal));
}

#[tokio::test(start_paused = true)]
async fn a_refused_acknowledgement_stops_numbering_until_the_leases_are_renewed() {
    // a1's acknowledgement lands after the bucket changed hands: a2,
    // claimed early, must not be numbered (the new owner numbers the key)
    // nor published.
    let (store, journal, _) = slow_acks(&["a1", "a2", "a3"]);
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b.batch_size(1).key_sequences(true));
    journal.calls(1).await;
    store.take_over(0, Duration::from_secs(3600));
    until("acknowledged", LIMIT, || !store.acks().is_empty()).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(sent(&journal), ["a1"]);
    assert_eq!(store.acks()[0].report.fenced, 1);
    assert_eq!(store.pending().len(), 3);
}
