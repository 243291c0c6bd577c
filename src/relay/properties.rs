//! Properties over random runs: two relays on the in-memory store, random
//! commits, publish failures (transient, with `Retry-After`, permanent),
//! slow publisher calls, stalls long enough for the other relay to take the
//! leases over, and restarts; then a drain. Whatever happens:
//!
//! - per key, the first successful publish of each message follows commit
//!   order (redeliveries after a takeover may repeat, never overtake);
//! - no message is lost: each ends published (an applied acknowledgement
//!   of a message the publisher confirmed) or dead-lettered;
//! - no acknowledgement of a relay applies once the bucket it claimed the
//!   message in has changed hands (the store checks every ack);
//! - a relay only hands the publisher messages of buckets it holds.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use uuid::Uuid;

use super::scripted::{message, spawn, tag, Journal};
use super::waves::Waves;
use super::RelayHandle;
use crate::error::PublishError;
use crate::store::memory::{claimed, Gate, MemoryStore};

#[derive(Debug, Clone)]
enum Step {
    /// Commits `n` messages of key `k{key}` (keyless if `None`).
    Enqueue {
        key: Option<u8>,
        n: u8,
    },
    Wait(Duration),
    /// After `after`, relay `relay` stops answering for `for_`: its store
    /// calls wait (the steps after this one go on meanwhile).
    Stall {
        relay: usize,
        after: Duration,
        for_: Duration,
    },
    /// Relay `relay` shuts down and a new one takes its place.
    Restart {
        relay: usize,
    },
}

#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    Transient,
    TransientAfter(Duration),
    Permanent,
}

#[derive(Debug, Clone)]
struct Run {
    buckets: i32,
    batch_size: usize,
    steps: Vec<Step>,
    /// Answers given in turn to each message sent, until the drain.
    answers: Vec<Answer>,
    /// Durations of the publisher calls, in turn.
    delays: Vec<Duration>,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (prop::option::weighted(0.8, 0u8..3), 1u8..5)
            .prop_map(|(key, n)| Step::Enqueue { key, n }),
        3 => (0u64..3_000).prop_map(|n| Step::Wait(ms(n))),
        // Leases last 2 s: most stalls outlive them.
        3 => (0usize..2, 0u64..2_000, 500u64..8_000).prop_map(|(relay, after, n)| {
            Step::Stall {
                relay,
                after: ms(after),
                for_: ms(n),
            }
        }),
        1 => (0usize..2).prop_map(|relay| Step::Restart { relay }),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        8 => Just(Answer::Ok),
        2 => Just(Answer::Transient),
        1 => (100u64..3_000).prop_map(|n| Answer::TransientAfter(ms(n))),
        1 => Just(Answer::Permanent),
    ]
}

fn run() -> impl Strategy<Value = Run> {
    (
        1i32..5,
        1usize..5,
        prop::collection::vec(step(), 1..24),
        prop::collection::vec(answer(), 1..24),
        prop::collection::vec(prop_oneof![1 => Just(0u64), 1 => 0u64..2_500], 1..8),
    )
        .prop_map(|(buckets, batch_size, steps, answers, delays)| Run {
            buckets,
            batch_size,
            steps,
            answers,
            delays: delays.into_iter().map(ms).collect(),
        })
}

type Running = Option<(RelayHandle, Gate, Uuid)>;

fn start(store: &MemoryStore, journal: &Journal, run: &Run) -> Running {
    Some(spawn(store, journal, |b| b.batch_size(run.batch_size)))
}

/// What a run leaves behind, for the checks.
struct Outcome {
    store: MemoryStore,
    journal: Journal,
    /// (position, key) of every message, in commit order.
    committed: Vec<(i64, Option<String>)>,
}

async fn simulate(run: Run) -> Outcome {
    let store = MemoryStore::new(run.buckets);
    let journal = Journal::new(&store);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answers = run.answers.clone();
    journal.answer(move |m| {
        let i = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let why = format!("scripted failure of {}", tag(m));
        match answers[i % answers.len()] {
            Answer::Ok => Ok(()),
            Answer::Transient => Err(PublishError::transient(why)),
            Answer::TransientAfter(d) => Err(PublishError::transient(why).with_retry_after(d)),
            Answer::Permanent => Err(PublishError::permanent(why)),
        }
    });
    let delays = run.delays.clone();
    journal.delay(move |call| delays[call % delays.len()]);

    let mut relays: Vec<Running> = (0..2).map(|_| start(&store, &journal, &run)).collect();
    let mut committed = Vec::new();
    let mut stalls = Vec::new();
    for step in &run.steps {
        match step {
            Step::Enqueue { key, n } => {
                for _ in 0..*n {
                    let key = key.map(|k| format!("k{k}"));
                    let t = format!("m{}", committed.len());
                    let seq = store
                        .enqueue(message(&t, key.as_deref()))
                        .expect("fresh id");
                    committed.push((seq, key));
                }
            }
            Step::Wait(d) => tokio::time::sleep(*d).await,
            Step::Stall { relay, after, for_ } => {
                if let Some((_, gate, _)) = &relays[*relay] {
                    let gate = gate.clone();
                    let (after, for_) = (*after, *for_);
                    stalls.push(tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        gate.close();
                        tokio::time::sleep(for_).await;
                        gate.open();
                    }));
                }
            }
            Step::Restart { relay } => {
                if let Some((handle, gate, _)) = relays[*relay].take() {
                    // A stalled relay cannot finish its batch.
                    gate.open();
                    handle.shutdown().await.expect("relay task");
                }
                relays[*relay] = start(&store, &journal, &run);
            }
        }
    }

    for stall in stalls {
        stall.await.expect("stall task");
    }
    // The drain: the destination recovers, dead letters are discarded (which
    // lifts the blocks they hold), and everything pending must go out.
    journal.answer(|_| Ok(()));
    journal.delay(|_| Duration::ZERO);
    for _ in 0..600 {
        store.discard_dead_letters();
        if store.pending().is_empty() {
            break;
        }
        tokio::time::sleep(ms(500)).await;
    }
    for (handle, _, _) in relays.into_iter().flatten() {
        handle.shutdown().await.expect("relay task");
    }
    Outcome {
        store,
        journal,
        committed,
    }
}

fn check(o: &Outcome) -> Result<(), TestCaseError> {
    let sent = o.journal.sent();
    let pending: Vec<i64> = o.store.pending().iter().map(|p| p.message.seq).collect();
    prop_assert!(
        pending.is_empty(),
        "still pending after the drain: {pending:?}"
    );

    // No loss: every message was published and acknowledged, or
    // dead-lettered (and discarded in the drain).
    let acked: HashSet<i64> = o.store.acked_published().iter().map(|a| a.1).collect();
    let dead: HashSet<i64> = o
        .store
        .discarded()
        .iter()
        .chain(o.store.dead_letters().iter())
        .map(|d| d.message.seq)
        .collect();
    for (seq, _) in &o.committed {
        prop_assert!(
            acked.contains(seq) || dead.contains(seq),
            "message {seq} was neither published nor dead-lettered"
        );
    }
    // An applied acknowledgement of a publish is backed by a confirmation
    // the same relay received.
    let confirmed: HashSet<(Uuid, i64)> = sent
        .iter()
        .filter(|s| s.ok)
        .map(|s| (s.relay, s.message.seq))
        .collect();
    for a in o.store.acked_published() {
        prop_assert!(
            confirmed.contains(&a),
            "{a:?} acknowledged, never confirmed"
        );
    }

    // Per key, first confirmations follow commit order.
    let mut first: HashSet<i64> = HashSet::new();
    let mut last_of_key: HashMap<String, i64> = HashMap::new();
    for s in sent.iter().filter(|s| s.ok) {
        if !first.insert(s.message.seq) {
            continue;
        }
        if let Some(k) = s.message.partition_key() {
            if let Some(prev) = last_of_key.insert(k.to_owned(), s.message.seq) {
                prop_assert!(
                    prev < s.message.seq,
                    "key {k}: {} first published after {prev}",
                    s.message.seq
                );
            }
        }
    }

    let violations = o.store.fencing_violations();
    prop_assert!(violations.is_empty(), "{violations:#?}");
    for s in &sent {
        prop_assert!(
            s.held,
            "relay {} sent {} without holding its bucket",
            s.relay,
            s.message.seq
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn order_delivery_and_fencing_survive_failures_takeovers_and_restarts(run in run()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let outcome = rt.block_on(simulate(run));
        check(&outcome)?;
    }

    #[test]
    fn waves_hold_one_message_per_key_and_a_stopped_key_sends_nothing_more(
        keys in prop::collection::vec(prop::option::of(0u8..4), 0..40),
        stops in prop::collection::vec(any::<bool>(), 0..40),
    ) {
        let batch: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| claimed(i as i64, k.map(|k| format!("k{k}")).as_deref(), 0))
            .collect();
        let owned = HashSet::from([0]);
        let mut waves = Waves::new(batch);
        let mut seen: Vec<i64> = Vec::new();
        let mut stopped: HashSet<String> = HashSet::new();
        let mut n = 0;
        loop {
            let wave = waves.next(&owned, false);
            if wave.is_empty() {
                break;
            }
            let mut in_wave = HashSet::new();
            for (queue, c) in wave {
                let key = c.message.partition_key.clone();
                if let Some(k) = &key {
                    prop_assert!(in_wave.insert(k.clone()), "two messages of {k} in a wave");
                    prop_assert!(!stopped.contains(k), "{k} went on after it stopped");
                    // Each key's messages come in commit order.
                    let in_order = seen
                        .iter()
                        .filter(|s| keys[**s as usize].map(|x| format!("k{x}")) == key)
                        .all(|s| *s < c.message.seq);
                    prop_assert!(in_order, "{k} out of order");
                }
                seen.push(c.message.seq);
                if stops.get(n).copied().unwrap_or(false) {
                    waves.stop(queue);
                    if let Some(k) = key {
                        stopped.insert(k);
                    }
                }
                n += 1;
            }
        }
        // Without stops, every message goes out.
        if !stops.iter().any(|s| *s) {
            prop_assert_eq!(seen.len(), keys.len());
        }
    }

    #[test]
    fn a_wave_of_runs_holds_each_owned_message_once_in_position_order(
        keys in prop::collection::vec(prop::option::of(0u8..6), 0..60),
    ) {
        // A key's bucket is its number's parity; a keyless message's, its
        // position's. Only bucket 0 is owned.
        let bucket = |i: usize, k: Option<u8>| i32::from(k.map_or(i % 2 == 1, |k| k % 2 == 1));
        let batch: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| claimed(i as i64, k.map(|k| format!("k{k}")).as_deref(), bucket(i, *k)))
            .collect();
        let mut waves = Waves::new(batch);
        let owned = HashSet::from([0]);
        let got: Vec<i64> = waves.next(&owned, true).iter().map(|(_, c)| c.message.seq).collect();
        let want: Vec<i64> = keys
            .iter()
            .enumerate()
            .filter(|(i, k)| bucket(*i, **k) == 0)
            .map(|(i, _)| i as i64)
            .collect();
        prop_assert_eq!(got, want);
        prop_assert!(waves.next(&HashSet::from([0, 1]), true).is_empty());
    }
}
