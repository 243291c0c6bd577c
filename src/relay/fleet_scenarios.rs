//! Relays sharing one outbox: how fast their shares of the buckets
//! settle, which of them reads the outbox's figures, and when the key
//! numbers acknowledgements record are folded. Driven like `scenarios.rs`,
//! through real relays on the in-memory store and paused time.

use std::time::Duration;

use super::maintenance::{FOLD_EVERY, FOLD_EVERY_READING};
use super::scripted::{message, spawn, until, Journal};
use crate::store::memory::MemoryStore;

/// Relays started together hold their fair shares within a few looks made
/// while shares settle (a fortieth of the TTL apart), not the two or three
/// usual cadences (a quarter to a third of it each) it took one of them to
/// see the others and give up its extra buckets, and the others to take
/// them: seconds during which one relay did all the work.
#[tokio::test(start_paused = true)]
async fn relays_started_together_hold_their_shares_within_a_few_looks() {
    let store = MemoryStore::new(64);
    let journal = Journal::new(&store);
    let ttl = Duration::from_secs(60);
    let relays: Vec<_> = (0..4)
        .map(|_| spawn(&store, &journal, |b| b.lease_ttl(ttl)))
        .collect();
    // The usual cadence would take at least 15 s.
    until("four shares of 16", Duration::from_secs(6), || {
        relays
            .iter()
            .all(|(r, _, _)| r.health().leased_buckets == 16)
    })
    .await;
    for (r, _, _) in relays {
        r.shutdown().await.unwrap();
    }
}

/// The outbox's figures are read by one relay of a fleet, the holder of
/// bucket 0, each stats interval (1 s here), not by every relay: on a large
/// backlog each reading counts the whole table.
#[tokio::test(start_paused = true)]
async fn one_relay_of_several_reads_the_outbox_figures() {
    let store = MemoryStore::new(64);
    let journal = Journal::new(&store);
    let relays: Vec<_> = (0..4).map(|_| spawn(&store, &journal, |b| b)).collect();
    until("four shares of 16", Duration::from_secs(10), || {
        relays
            .iter()
            .all(|(r, _, _)| r.health().leased_buckets == 16)
    })
    .await;
    let before = store.stats_reads();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let reads = store.stats_reads() - before;
    assert!((15..=25).contains(&reads), "{reads} readings in 20 s");
    for (r, _, _) in relays {
        r.shutdown().await.unwrap();
    }
}

/// A relay that joins one holding every bucket takes its share within a
/// look of the holder's next usual one (which sees it and releases), where
/// it used to wait for its own next usual look as well.
#[tokio::test(start_paused = true)]
async fn a_relay_joining_takes_its_share_soon_after_the_holder_gives_it_up() {
    let store = MemoryStore::new(64);
    let journal = Journal::new(&store);
    let ttl = Duration::from_secs(60);
    let (first, _g1, _) = spawn(&store, &journal, |b| b.lease_ttl(ttl));
    until(
        "the first relay holds every bucket",
        Duration::from_secs(5),
        || first.health().leased_buckets == 64,
    )
    .await;
    // Long after its shares settled: it looks at its usual cadence.
    tokio::time::sleep(Duration::from_secs(90)).await;
    let (second, _g2, _) = spawn(&store, &journal, |b| b.lease_ttl(ttl));
    // The holder's next usual look is at most 20 s away.
    until("the holder gives up half", Duration::from_secs(21), || {
        first.health().leased_buckets == 32
    })
    .await;
    // The newcomer's next usual look could be up to 20 s later.
    until(
        "the newcomer holds the other half",
        Duration::from_secs(2),
        || second.health().leased_buckets == 32,
    )
    .await;
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

/// A numbering relay folds the key numbers its acknowledgements recorded
/// between its parking passes (which fold too): every
/// [`FOLD_EVERY_READING`] acknowledgements while it reads numbers of keys
/// it does not know (a read goes through every record not folded yet),
/// every [`FOLD_EVERY`] once it knows its keys (a fold writes each key
/// once, however many records hold it); a relay that does not number
/// never folds.
#[tokio::test(start_paused = true)]
async fn a_numbering_relay_folds_recorded_numbers_every_few_acknowledgements() {
    // Short of the fourth fold without reads: a relay that read only
    // once folds at the start, then after 16, 80 and 144; one that forgot
    // its read at once, at the start, 64 and 128.
    let acks = (3 * FOLD_EVERY - FOLD_EVERY_READING / 2) as usize;
    for (numbered, new_keys) in [(true, false), (true, true), (false, true)] {
        let store = MemoryStore::new(1);
        let journal = Journal::new(&store);
        for i in 0..acks {
            let key = if new_keys {
                format!("k{i}")
            } else {
                "k".to_owned()
            };
            store
                .enqueue(message(&format!("m{i}"), Some(&key)))
                .unwrap();
        }
        let (relay, _gate, _) = spawn(&store, &journal, |b| {
            b.batch_size(1).key_sequences(numbered)
        });
        until("drained", Duration::from_secs(60), || {
            store.pending().is_empty()
        })
        .await;
        let folds = store.folds();
        relay.shutdown().await.unwrap();
        // One as the relay starts (its first parking pass), then one per
        // period of acknowledgements, with no second parking pass: the
        // drain takes no time.
        if !numbered {
            assert_eq!(folds, 0);
        } else if new_keys {
            // A new key in every batch: read each time.
            let expected = acks / FOLD_EVERY_READING as usize;
            assert!(
                folds >= expected,
                "{folds} folds over {acks} acknowledgements"
            );
        } else {
            // Read once, for the first batch: one fold after
            // FOLD_EVERY_READING acknowledgements, then one every
            // FOLD_EVERY.
            assert_eq!(folds, 4, "{folds} folds over {acks} acknowledgements");
        }
    }
}

/// Folds between parking passes share the parking pass's slot (one
/// connection for both), and parking passes keep their cadence beside
/// them. Acknowledgements take 100 ms, each with a new key (so a fold is
/// due every 16 of them, 1.6 s), and a fold, alone or at the end of a
/// pass, takes 2.5 s: a fold is due whenever the slot frees, so folds
/// would hold it for good if passes waited for a free slot at their turn.
/// A pass due while a fold runs starts as the fold ends instead, so the
/// slot alternates: a pass (2.5 s), a fold (2.5 s), a pass; a cycle
/// takes about 5 s (at most 5.2: one acknowledgement and one look again
/// between the two), which gives at least 11 passes in a minute.
#[tokio::test(start_paused = true)]
async fn parking_passes_go_on_beside_folds_of_key_numbers() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    for i in 0..2000 {
        store
            .enqueue(message(&format!("m{i}"), Some(&format!("k{i}"))))
            .unwrap();
    }
    store.set_ack_delay(Duration::from_millis(100));
    store.set_fold_delay(Duration::from_millis(2500));
    let (relay, _gate, _) = spawn(&store, &journal, |b| b.batch_size(1).key_sequences(true));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (parks, folds) = (store.parks(), store.folds());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (parks, folds) = (store.parks() - parks, store.folds() - folds);
    assert!(
        !store.pending().is_empty(),
        "drained before the minute ended"
    );
    relay.shutdown().await.unwrap();
    assert!(
        parks >= 10,
        "{parks} parking passes in 60 s, beside {folds} folds"
    );
    // Each pass folds once; folds of their own ran between most of them
    // (a pass can follow a pass when its turn comes as the last one ends,
    // before a fold starts).
    assert!(
        2 * (folds - parks) >= parks,
        "{folds} folds beside {parks} passes in 60 s"
    );
}
