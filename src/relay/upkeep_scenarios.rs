//! The relay's upkeep beside its rounds: purging retained messages,
//! parking held-back messages, reading the outbox's figures and vacuuming,
//! each slow or failing without holding up publishing. Driven like
//! `scenarios.rs`, through a real relay on the in-memory store and paused
//! time.

use std::time::Duration;

use super::scripted::{message, spawn, until, Journal};
use super::{RelayState, Retention};
use crate::store::memory::MemoryStore;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn retained_messages_are_purged_after_the_retention_window() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    for t in ["a1", "a2", "a3"] {
        store.enqueue(message(t, None)).unwrap();
    }
    let keep = Duration::from_secs(5);
    let (_relay, _gate, _) = spawn(&store, &journal, |b| b.retention(Retention::Keep(keep)));
    until("drained", LIMIT, || store.pending().is_empty()).await;
    assert_eq!(store.published().len(), 3);
    tokio::time::sleep(keep - Duration::from_secs(1)).await;
    assert_eq!(store.published().len(), 3, "kept for the whole window");
    until("purged", Duration::from_secs(3), || {
        store.published().is_empty()
    })
    .await;
}

/// Parking passes (which wake sleeping retries before they are due) run
/// about once a second whatever the poll interval, without a claim each.
#[tokio::test(start_paused = true)]
async fn parking_runs_every_second_without_claiming_at_that_pace() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    let (_relay, _gate, _) = spawn(&store, &journal, |b| {
        b.poll_interval(Duration::from_secs(30))
            .lease_ttl(Duration::from_secs(60))
    });
    until("running", LIMIT, || !store.claims().is_empty()).await;
    let (parks, claims) = (store.parks(), store.claims().len());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let parks = store.parks() - parks;
    assert!((8..=12).contains(&parks), "{parks} parking passes in 10 s");
    assert_eq!(
        store.claims().len(),
        claims,
        "no claim before the poll interval"
    );
}

/// A parking pass slower than its period (a million messages to park, a
/// slow connection) delays only the next pass: the relay keeps claiming at
/// its poll interval meanwhile (it used to spin, on frozen test time:
/// hanging, which the watchdog turns into a failure).
#[tokio::test(start_paused = true)]
async fn a_slow_parking_pass_holds_up_nothing_but_the_next_one() {
    let (done, watched) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            watched.recv_timeout(Duration::from_secs(20))
        {
            eprintln!("the relay spun while a parking pass ran");
            std::process::exit(1);
        }
    });
    let store = MemoryStore::new(1);
    store.set_park_delay(Duration::from_secs(10));
    let journal = Journal::new(&store);
    let (_relay, _gate, _) = spawn(&store, &journal, |b| {
        b.poll_interval(Duration::from_secs(3))
            .lease_ttl(Duration::from_secs(60))
    });
    until("running", LIMIT, || store.parks() > 0).await;
    let claims = store.claims().len();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let claims = store.claims().len() - claims;
    assert!((8..=12).contains(&claims), "{claims} claims in 30 s");
    assert!(
        store.parks() <= 4,
        "{} passes, one at a time",
        store.parks()
    );
    drop(done);
}

/// Statistics queries that take a second (a table of tens of millions to
/// count) run at most about a tenth of the time, not back to back at the
/// stats interval; quick ones keep the interval, and so do slow ones that
/// fail (a timeout says nothing of how long counting takes).
#[tokio::test(start_paused = true)]
async fn slow_statistics_queries_stretch_the_stats_interval() {
    for (delay, fail, expect) in [
        (Duration::from_secs(1), false, 4..=8),
        (Duration::from_millis(20), false, 30..=70),
        (Duration::from_secs(1), true, 20..=70),
    ] {
        let store = MemoryStore::new(1);
        store.set_stats_delay(delay, fail);
        let journal = Journal::new(&store);
        let (relay, _gate, _) = spawn(&store, &journal, |b| {
            b.stats_interval(Duration::from_secs(1))
        });
        until("a first stats pass", LIMIT, || store.stats_reads() > 0).await;
        let first = store.stats_reads();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let passes = store.stats_reads() - first;
        assert!(
            expect.contains(&passes),
            "{passes} stats passes in 60 s with queries taking {delay:?} (failing: {fail})"
        );
        relay.shutdown().await.unwrap();
    }
}

/// A statistics read that fails leaves the gauges at their last readings,
/// so it is counted where an alert on errors sees it, under its own
/// `operation`.
#[tokio::test(start_paused = true)]
async fn a_failed_statistics_read_is_counted_as_an_error() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let store = MemoryStore::new(1);
    store.set_stats_delay(Duration::ZERO, true);
    let journal = Journal::new(&store);
    let (relay, _gate, _) = spawn(&store, &journal, |b| {
        b.stats_interval(Duration::from_secs(1))
    });
    until("a few stats passes", LIMIT, || store.stats_reads() >= 3).await;
    relay.shutdown().await.unwrap();
    let counted: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            let key = key.key();
            key.name() == "outbox_relay_errors_total"
                && key
                    .labels()
                    .any(|l| l.key() == "operation" && l.value() == "reading statistics")
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert!(counted >= 3, "{counted} failed statistics reads counted");
}

#[tokio::test(start_paused = true)]
async fn a_table_nothing_vacuums_is_vacuumed_by_the_relay_unless_told_not_to() {
    for (allowed, expect) in [(true, true), (false, false)] {
        let store = MemoryStore::new(1);
        let journal = Journal::new(&store);
        store.set_table_upkeep(Some(20_000), Some(false));
        let (relay, _gate, _) = spawn(&store, &journal, |b| b.vacuum_if_autovacuum_off(allowed));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            store.vacuums() > 0,
            expect,
            "vacuum_if_autovacuum_off({allowed})"
        );
        relay.shutdown().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn slow_maintenance_never_holds_up_publishing_or_lease_renewal() {
    let store = MemoryStore::new(1);
    let journal = Journal::new(&store);
    store.set_table_upkeep(Some(20_000), Some(false));
    let upkeep = store.maintenance_gate();
    upkeep.close();
    let (relay, _gate, id) = spawn(&store, &journal, |b| {
        b.retention(Retention::Keep(Duration::from_secs(1)))
    });
    until("a pass is held", LIMIT, || store.maintenance_calls() == 1).await;
    // Ten stats intervals and five lease lifetimes with the pass held.
    for i in 0..10 {
        let t = format!("m{i}");
        store.enqueue(message(&t, None)).unwrap();
        until("published promptly", Duration::from_millis(300), || {
            journal.confirmed().contains(&t)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(store.holder(0), Some(id), "leases renewed meanwhile");
    assert_eq!(relay.health().state, RelayState::Running);
    assert_eq!(store.maintenance_calls(), 1, "one pass at a time");
    // Released, the pass goes on (vacuum, purge) and later ones follow.
    upkeep.open();
    until("later passes", LIMIT, || store.maintenance_calls() >= 6).await;
    assert!(store.vacuums() > 0);
    assert_eq!(store.most_maintenance_at_once(), 1);
    // A pass held at shutdown does not hold the shutdown.
    upkeep.close();
    let held = store.maintenance_calls();
    until("a pass is held again", LIMIT, || {
        store.maintenance_calls() > held
    })
    .await;
    let asked = tokio::time::Instant::now();
    relay.shutdown().await.expect("relay task");
    assert!(tokio::time::Instant::now() - asked < Duration::from_millis(100));
}
