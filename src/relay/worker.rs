//! The worker: its state, its loop, and how it waits and recovers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::clock::Clock;
use super::maintenance::{Parking, Upkeep};
use super::numbering::KnownNumbers;
use super::round::{PendingAck, Prefetch};
use super::shutdown::Shutdown;
use super::{Health, RelayConfig, RelayState};
use crate::error::error_chain;
use crate::publisher::Publisher;
use crate::store::sealed::StoreOps;
use crate::store::{Lease, Release, WakeSource};

/// A relay's task: it holds the leases and the batch state between rounds;
/// its methods live in the file of each concern.
pub(super) struct Worker {
    pub(super) store: Arc<dyn StoreOps>,
    pub(super) publisher: Arc<dyn Publisher>,
    pub(super) config: RelayConfig,
    pub(super) shutdown: Shutdown,
    health_tx: Arc<watch::Sender<Health>>,
    pub(super) health: Health,
    pub(super) clock: Clock,
    pub(super) bucket_count: i32,
    pub(super) leases: Vec<Lease>,
    pub(super) lease_deadline: Instant,
    pub(super) next_lease_tick: Instant,
    /// Until when lease ticks come often: shares are settling after the
    /// live relays or this relay's leases changed.
    pub(super) settle_until: Instant,
    /// The live relays the last heartbeat counted.
    pub(super) last_live: usize,
    /// Whether this relay's last upkeep pass set the outbox's gauges (it
    /// held bucket 0).
    pub(super) keeps_books: bool,
    /// When the next round is due without a wake-up: a poll interval after
    /// a round that found the batch short, at once after a full one.
    poll_due: Instant,
    pub(super) next_stats: Instant,
    /// How long the last stats pass's queries took (see
    /// [`STATS_SHARE`](super::maintenance::STATS_SHARE)).
    pub(super) last_counting: Option<Duration>,
    /// When the next parking of messages behind blocked keys is due.
    pub(super) next_park: Instant,
    pub(super) next_retry: Option<Instant>,
    listener: Option<Box<dyn WakeSource>>,
    listener_retry_at: Instant,
    error_backoff: Duration,
    pub(super) warned_autovacuum_off: bool,
    /// The maintenance pass running, if any: at most one at a time.
    pub(super) upkeep: Option<Upkeep>,
    /// The parking pass running, if any: at most one at a time.
    pub(super) parking: Option<Parking>,
    /// The next batch, claimed while the current one was in flight.
    pub(super) prefetch: Option<Prefetch>,
    /// Keys with a message that was not published in a batch whose
    /// acknowledgement had not landed when the prefetched batch was
    /// claimed: it may hold their later messages, which must wait.
    pub(super) unsettled: HashSet<String>,
    /// The keys the last batch left unsettled, for the early claim made
    /// while its acknowledgement is in flight.
    pub(super) last_unsettled: HashSet<String>,
    /// The last batch's acknowledgement, written while this one is
    /// published.
    pub(super) pending_ack: Option<PendingAck>,
    /// When a publish last failed, and its error, while none has succeeded
    /// since: the relay reports `PublishFailing` within
    /// [`PUBLISH_FAILING_WINDOW`] of it.
    pub(super) publish_failure: Option<(Instant, String)>,
    /// The topics whose gauges were last set, to zero those that empty.
    pub(super) gauged_topics: HashSet<String>,
    /// How many messages the last round claimed.
    pub(super) last_claimed: usize,
    /// Whether the last batch left messages pending behind a failure of
    /// their key in the same publisher call (runs of a key): the next
    /// claim runs at once rather than at the next wake-up.
    pub(super) held_back: bool,
    /// The last per-key numbers stored for keys of the buckets held, as
    /// far as this relay knows them (numbering on).
    pub(super) known_numbers: KnownNumbers,
    /// Acknowledgements that recorded key numbers since the last fold of
    /// the recorded numbers started.
    pub(super) unfolded_acks: u32,
    /// Whether numbering read numbers from the store since the last fold
    /// started (see [`fold_every`](super::maintenance::fold_every)).
    pub(super) read_numbers: bool,
}

/// The outcome of queueing for a turn in a relay group.
enum Turn {
    /// The turn: a round may run while it is held.
    Taken(OwnedSemaphorePermit),
    /// The leases need the loop's attention first.
    Renew,
    /// Renewing the leases failed: back off, then let the loop retry.
    Failed,
    /// The relay is asked to stop.
    Stop,
}

/// How long after its last failed publish, with none succeeding since, a
/// relay reports `PublishFailing`.
pub(super) const PUBLISH_FAILING_WINDOW: Duration = Duration::from_secs(60);

const MIN_ERROR_BACKOFF: Duration = Duration::from_millis(100);
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(10);

impl Worker {
    pub(super) fn new(
        store: Arc<dyn StoreOps>,
        publisher: Arc<dyn Publisher>,
        config: RelayConfig,
        shutdown: Shutdown,
        health_tx: Arc<watch::Sender<Health>>,
    ) -> Self {
        let now = Instant::now();
        // Relays started together settle their shares at once.
        let settle_until = now + config.lease_ttl.mul_f64(super::leases::SETTLING);
        let health = health_tx.borrow().clone();
        Self {
            store,
            publisher,
            config,
            shutdown,
            health,
            health_tx,
            clock: Clock::new(),
            bucket_count: 0,
            leases: Vec::new(),
            lease_deadline: now,
            next_lease_tick: now,
            settle_until,
            last_live: 0,
            keeps_books: false,
            poll_due: now,
            next_stats: now,
            last_counting: None,
            next_park: now,
            next_retry: None,
            listener: None,
            listener_retry_at: now,
            error_backoff: MIN_ERROR_BACKOFF,
            warned_autovacuum_off: false,
            upkeep: None,
            parking: None,
            prefetch: None,
            unsettled: HashSet::new(),
            last_unsettled: HashSet::new(),
            pending_ack: None,
            publish_failure: None,
            gauged_topics: HashSet::new(),
            last_claimed: 0,
            held_back: false,
            known_numbers: KnownNumbers::default(),
            unfolded_acks: 0,
            read_numbers: false,
        }
    }

    fn stopping(&self) -> bool {
        self.shutdown.requested()
    }

    pub(super) fn publish_health(&mut self) {
        self.health.leased_buckets = self.leases.len();
        // Set with every report, so it drops to 0 whatever state follows.
        metrics::gauge!("outbox_relay_publish_failing", self.config.labels.all()).set(
            if self.health.state == RelayState::PublishFailing {
                1.0
            } else {
                0.0
            },
        );
        let mut h = self.health.clone();
        let shutdown = &self.shutdown;
        self.health_tx.send_if_modified(|old| {
            // A relay asked to stop says so until it has stopped, whatever
            // its last rounds report. Read under the channel's lock: the
            // handle asks to stop before it marks the relay `Stopping`, so
            // a report racing with it cannot undo the mark.
            if h.state != RelayState::Stopped && shutdown.requested() {
                h.state = RelayState::Stopping;
            }
            if *old == h {
                false
            } else {
                *old = h;
                true
            }
        });
    }

    fn record_error(&mut self, what: &'static str, e: &crate::Error) {
        tracing::warn!(relay = %self.config.relay_id, error = %error_chain(e), "outbox relay: {what} failed");
        metrics::counter!(
            "outbox_relay_errors_total",
            self.config.labels.with("operation", what)
        )
        .increment(1);
        self.health.state = RelayState::Degraded;
        self.health.last_error = Some(format!("{what}: {}", error_chain(e)));
        self.publish_health();
    }

    /// A round that reached the database: `Running`, or `PublishFailing`
    /// while the publisher's last attempts failed and none succeeded.
    pub(super) fn record_success(&mut self) {
        self.error_backoff = MIN_ERROR_BACKOFF;
        // A scheduled retry keeps the state: during an outage the retries
        // back off past the window.
        let retry_waits = self.next_retry.is_some();
        let failing = self
            .publish_failure
            .as_ref()
            .filter(|(at, _)| retry_waits || at.elapsed() < PUBLISH_FAILING_WINDOW);
        let (state, error) = match failing {
            Some((_, e)) => (RelayState::PublishFailing, Some(format!("publish: {e}"))),
            None => (RelayState::Running, None),
        };
        let was = self.health.state;
        self.health.state = state;
        self.health.last_error = error;
        if was != state && state == RelayState::PublishFailing {
            tracing::warn!(
                relay = %self.config.relay_id,
                error = self.health.last_error.as_deref().unwrap_or(""),
                "outbox relay: every publish fails"
            );
        }
        self.publish_health();
    }

    /// Sleeps after an error, growing the pause up to a cap; returns early
    /// on shutdown.
    async fn back_off(&mut self) {
        let d = self.error_backoff;
        self.error_backoff = (self.error_backoff * 2).min(MAX_ERROR_BACKOFF);
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shutdown.asked() => {}
        }
    }

    pub(super) async fn run(mut self) {
        let relay = self.config.relay_id;
        let shutdown = self.shutdown.clone();
        // Start-up: the schema must exist and not be newer than this crate.
        while !self.stopping() {
            let started = async {
                self.store.check_schema().await?;
                self.store.bucket_count().await
            };
            match shutdown.unless_asked(started).await {
                None => break,
                Some(Ok(n)) => {
                    self.bucket_count = n.max(1);
                    break;
                }
                Some(Err(e)) => {
                    self.record_error("start-up", &e);
                    self.back_off().await;
                }
            }
        }
        let signal = self.store.local_signal();
        while !self.stopping() {
            self.collect_maintenance().await;
            let now = Instant::now();
            if now >= self.next_lease_tick {
                let settling = now < self.settle_until;
                // The leases change under no acknowledgement in flight.
                match shutdown.bound(self.settle_ack()).await {
                    None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        self.prefetch = None;
                        self.record_error("publish round", &e);
                        self.back_off().await;
                        continue;
                    }
                }
                match shutdown.bound(self.manage_leases()).await {
                    None => break,
                    Some(Ok(changed)) => {
                        if settling && !changed && Instant::now() < self.poll_due {
                            // An early look while shares settle found
                            // nothing moved: no round before it is due.
                            let until = self.wake_deadline().min(self.poll_due);
                            self.wait(&signal, until).await;
                            continue;
                        }
                    }
                    Some(Err(e)) => {
                        // Keep the leases: renewing them with the same epoch
                        // is safe later, and the deadline keeps us from
                        // publishing meanwhile.
                        self.record_error("lease renewal", &e);
                        self.back_off().await;
                        continue;
                    }
                }
            }
            self.start_maintenance();
            if self.listener.is_none() && Instant::now() >= self.listener_retry_at {
                let Some(listened) = shutdown.unless_asked(self.store.listen()).await else {
                    break;
                };
                match listened {
                    Ok(l) => self.listener = l,
                    Err(e) => {
                        tracing::debug!(error = %error_chain(&e), "outbox relay: LISTEN failed; polling");
                        self.listener_retry_at = Instant::now() + self.config.poll_interval * 5;
                    }
                }
            }
            if Instant::now() >= self.lease_deadline && !self.leases.is_empty() {
                // Our view of the leases is too old to publish on: renew them
                // first (it fails for any bucket that changed hands).
                self.next_lease_tick = Instant::now();
                continue;
            }
            if self.leases.is_empty() {
                // Other relays hold every bucket: stand by, and take over
                // when one leaves or its leases expire.
                if self.health.state != RelayState::StandingBy {
                    self.health.state = RelayState::StandingBy;
                    self.health.last_error = None;
                    self.publish_health();
                }
                self.wait(&signal, self.next_lease_tick).await;
                continue;
            }
            // In a group, each round waits its turn.
            let turn = match self.config.turns.clone() {
                Some(turns) => match self.take_turn(turns).await {
                    Turn::Taken(permit) => Some(permit),
                    Turn::Renew => continue,
                    Turn::Failed => {
                        self.back_off().await;
                        continue;
                    }
                    Turn::Stop => break,
                },
                None => None,
            };
            let started = Instant::now();
            let ran = match turn {
                Some(turn) => self.round_in_turn(turn).await,
                None => shutdown.bound(self.round()).await,
            };
            match ran {
                // Stopping, and the round's store calls ran out of time:
                // whether its acknowledgement landed is unknown, and the
                // next owner publishes whatever it did not settle.
                None => break,
                Some(Ok(full)) => {
                    // An acknowledgement still in flight reports when it
                    // lands.
                    if self.pending_ack.is_none() {
                        self.record_success();
                    }
                    self.poll_due = Instant::now();
                    if !full {
                        self.poll_due += self.config.poll_interval;
                        if let Some(p) = self
                            .config
                            .pacing
                            .as_ref()
                            .filter(|_| self.last_claimed > 0)
                        {
                            p.light_round(self.config.relay_id);
                        }
                        let until = self.wake_deadline();
                        self.wait(&signal, until).await;
                    } else if let Some(p) = &self.config.pacing {
                        let pause = p.pause_after_full(self.config.relay_id, started.elapsed());
                        if !pause.is_zero() {
                            let until = (Instant::now() + pause).min(self.next_lease_tick);
                            tokio::select! {
                                () = tokio::time::sleep_until(until) => {}
                                _ = shutdown.asked() => {}
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    // Whether the acknowledgement landed is unknown: claim
                    // afresh.
                    self.prefetch = None;
                    self.record_error("publish round", &e);
                    self.back_off().await;
                }
            }
        }
        self.prefetch = None;
        // The last acknowledgement lands before the leases go back (one
        // that does not lands fenced or not at all: the buckets' next
        // owner publishes its messages again).
        if let Some(Err(e)) = shutdown.bound(self.settle_ack()).await {
            self.record_error("publish round", &e);
        }
        // A vacuum or purge cut short is harmless: the next relay's pass
        // does it again.
        self.upkeep = None;
        self.parking = None;
        self.publish_health();
        // Give the buckets back so other relays need not wait for expiry;
        // bounded, so a database that refuses connections cannot hold the
        // shutdown for a pool's acquire timeout.
        let release = Release {
            relay,
            leases: &self.leases,
        };
        match shutdown.bound(self.store.release(release)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %error_chain(&e), "outbox relay: releasing leases failed; they expire on their own");
            }
            None => {
                tracing::warn!(
                    "outbox relay: releasing leases took too long; they expire on their own"
                );
            }
        }
        let _ = shutdown.bound(self.store.leave(relay)).await;
        self.leases.clear();
        self.zero_named_gauges();
        self.health.state = RelayState::Stopped;
        self.publish_health();
        tracing::info!(relay = %relay, "outbox relay stopped");
    }

    /// Queues for a round's turn in the group, first come, first served,
    /// so a member with a backlog goes behind the others after every
    /// batch. While it waits, its leases are renewed on time (beside the
    /// queue, which keeps its place and can hand over the turn meanwhile)
    /// and its parking and statistics passes start when due.
    async fn take_turn(&mut self, turns: Arc<Semaphore>) -> Turn {
        let shutdown = self.shutdown.clone();
        let queued = turns.acquire_owned();
        tokio::pin!(queued);
        let mut renewing = None;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.asked() => return Turn::Stop,
                permit = &mut queued => {
                    let Ok(permit) = permit else {
                        return Turn::Stop;
                    };
                    if let Some(renewal) = renewing.take() {
                        // Rarely: the turn came during a renewal. Let it
                        // end, bounded like any store call.
                        match shutdown.bound(renewal).await {
                            None => return Turn::Stop,
                            Some((started, kept)) => {
                                if !self.renewed_in_queue(started, kept) {
                                    return Turn::Failed;
                                }
                            }
                        }
                    }
                    // A bucket lost while queued, or leases too old to
                    // publish on: the loop sorts the leases out first.
                    let stale = Instant::now() >= self.lease_deadline || self.leases.is_empty();
                    return if stale { Turn::Renew } else { Turn::Taken(permit) };
                }
                (started, kept) = async { renewing.as_mut().expect("guarded").await },
                    if renewing.is_some() => {
                    renewing = None;
                    if !self.renewed_in_queue(started, kept) {
                        return Turn::Failed;
                    }
                }
                () = tokio::time::sleep_until(self.next_lease_tick), if renewing.is_none() => {
                    renewing = Some(Box::pin(self.renewal()));
                    self.start_maintenance();
                }
            }
        }
    }

    /// A round in the group's turn. A round that outlasts the lease TTL
    /// (a publisher hanging on one tenant's broker) gives its turn up and
    /// goes on without it, so hung members cannot hold every turn.
    async fn round_in_turn(&mut self, turn: OwnedSemaphorePermit) -> Option<crate::Result<bool>> {
        let shutdown = self.shutdown.clone();
        let budget = tokio::time::sleep(self.config.lease_ttl);
        let relay = self.config.relay_id;
        let round = shutdown.bound(self.round());
        tokio::pin!(round, budget);
        let mut turn = Some(turn);
        loop {
            tokio::select! {
                ran = &mut round => return ran,
                () = &mut budget, if turn.is_some() => {
                    turn = None;
                    tracing::warn!(
                        relay = %relay,
                        "outbox relay group: a round outlasted the lease TTL; \
                         its turn goes to the next member"
                    );
                }
            }
        }
    }

    /// Takes in a renewal made while queued for a turn; false if it failed.
    fn renewed_in_queue(&mut self, started: Instant, kept: crate::Result<Vec<Lease>>) -> bool {
        match self.take_renewal(started, kept) {
            Ok(()) => {
                self.publish_health();
                true
            }
            Err(e) => {
                self.record_error("lease renewal", &e);
                false
            }
        }
    }

    fn wake_deadline(&self) -> Instant {
        let mut t = Instant::now() + self.config.poll_interval;
        t = t.min(self.next_lease_tick);
        if let Some(r) = self.next_retry {
            t = t.min(r);
        }
        t
    }

    /// Waits for a wake-up: a local commit, a notification, the deadline or
    /// shutdown. Parking passes due meanwhile are started on time (they
    /// wake sleeping retries before they are due, whatever the poll
    /// interval), without a claim.
    async fn wait(&mut self, signal: &tokio::sync::Notify, until: Instant) {
        loop {
            let deadline = self.next_park.min(until);
            let timed_out = self.wait_once(signal, deadline).await;
            if !timed_out || Instant::now() >= until {
                break;
            }
            // Starting the pass moves `next_park` a period on, so this
            // never spins.
            self.start_maintenance();
        }
        if self.next_retry.is_some_and(|r| r <= Instant::now()) {
            self.next_retry = None;
        }
    }

    /// Waits until `until` (true) or an earlier wake-up (false).
    async fn wait_once(&mut self, signal: &tokio::sync::Notify, until: Instant) -> bool {
        let shutdown = self.shutdown.clone();
        let sleep = tokio::time::sleep_until(until);
        match self.listener.as_mut() {
            Some(l) => {
                tokio::select! {
                    _ = sleep => true,
                    _ = signal.notified() => false,
                    _ = shutdown.asked() => false,
                    r = l.next() => {
                        if let Err(e) = r {
                            // Notifications may have been missed: drop the
                            // listener, reconnect later and look now.
                            tracing::debug!(error = %error_chain(&e), "outbox relay: LISTEN connection lost");
                            self.listener = None;
                            self.listener_retry_at = Instant::now() + self.config.poll_interval;
                        }
                        false
                    }
                }
            }
            None => {
                tokio::select! {
                    _ = sleep => true,
                    _ = signal.notified() => false,
                    _ = shutdown.asked() => false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::InMemoryPublisher;
    use crate::relay::Relay;
    use crate::store::memory::MemoryStore;

    #[tokio::test(start_paused = true)]
    async fn a_relay_asked_to_stop_reports_stopping_whatever_its_rounds_say() {
        let b = Relay::builder(MemoryStore::new(1), InMemoryPublisher::new());
        let (stop, asked) = watch::channel(None);
        let (health_tx, health) = watch::channel(Health::starting());
        let shutdown = Shutdown::new(asked, Duration::from_secs(1));
        let mut w = Worker::new(
            b.store,
            b.publisher,
            b.config,
            shutdown,
            Arc::new(health_tx),
        );
        w.record_success();
        assert_eq!(health.borrow().state, RelayState::Running);
        stop.send_replace(Some(Instant::now()));
        // A round that ends (well or badly) during the grace period.
        w.record_success();
        assert_eq!(health.borrow().state, RelayState::Stopping);
        w.record_error(
            "publish round",
            &crate::Error::InvalidConfig {
                field: "x",
                reason: "y".into(),
            },
        );
        let h = health.borrow().clone();
        assert_eq!(h.state, RelayState::Stopping);
        assert!(h.last_error.is_some(), "the error is still reported");
        w.health.state = RelayState::Stopped;
        w.publish_health();
        assert_eq!(health.borrow().state, RelayState::Stopped);
    }
}
