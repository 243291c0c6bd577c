use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Health, OrderingPolicy, RelayConfig, RelayState, Retention};
use crate::error::{error_chain, PublishError, Result};
use crate::message::OutboxMessage;
use crate::publisher::Publisher;
use crate::store::sealed::StoreOps;
use crate::store::{
    Ack, AckBatch, Acquire, Claim, Claimed, Disposition, Heartbeat, Lease, Purge, Release, Renew,
    WakeSource,
};

/// Wall-clock time derived from tokio's clock, so retry schedules follow
/// paused time in tests and never jump with the system clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall: DateTime<Utc>,
    at: Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            wall: Utc::now(),
            at: Instant::now(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        let elapsed = Instant::now().saturating_duration_since(self.at);
        self.wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }

    fn instant_of(&self, t: DateTime<Utc>) -> Instant {
        let d = (t - self.wall).to_std().unwrap_or(Duration::ZERO);
        self.at + d
    }
}

pub(super) struct Worker {
    store: Arc<dyn StoreOps>,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
    stop: watch::Receiver<bool>,
    health_tx: watch::Sender<Health>,
    health: Health,
    clock: Clock,
    bucket_count: i32,
    leases: Vec<Lease>,
    lease_deadline: Instant,
    next_lease_tick: Instant,
    next_stats: Instant,
    next_retry: Option<Instant>,
    listener: Option<Box<dyn WakeSource>>,
    listener_retry_at: Instant,
    error_backoff: Duration,
    warned_autovacuum_off: bool,
    /// The next batch, claimed while the current one was in flight.
    prefetch: Option<Prefetch>,
    /// Keys of the last batch with a message that was not published: the
    /// prefetched batch may hold their later messages, which must wait.
    unsettled: HashSet<String>,
}

/// A claim running while the batch before it is published and
/// acknowledged; aborted when dropped.
struct Prefetch(tokio::task::JoinHandle<Result<Vec<Claimed>>>);

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const MIN_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Dead rows in the messages table above which a relay vacuums it itself
/// when the server's autovacuum is off.
const SELF_VACUUM_DEAD_ROWS: i64 = 10_000;
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(10);

impl Worker {
    pub(super) fn new(
        store: Arc<dyn StoreOps>,
        publisher: Arc<dyn Publisher>,
        config: RelayConfig,
        stop: watch::Receiver<bool>,
        health_tx: watch::Sender<Health>,
    ) -> Self {
        let now = Instant::now();
        let health = health_tx.borrow().clone();
        Self {
            store,
            publisher,
            config,
            stop,
            health,
            health_tx,
            clock: Clock::new(),
            bucket_count: 0,
            leases: Vec::new(),
            lease_deadline: now,
            next_lease_tick: now,
            next_stats: now,
            next_retry: None,
            listener: None,
            listener_retry_at: now,
            error_backoff: MIN_ERROR_BACKOFF,
            warned_autovacuum_off: false,
            prefetch: None,
            unsettled: HashSet::new(),
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn publish_health(&mut self) {
        self.health.leased_buckets = self.leases.len();
        let h = self.health.clone();
        self.health_tx.send_if_modified(|old| {
            if *old == h {
                false
            } else {
                *old = h;
                true
            }
        });
    }

    fn record_error(&mut self, what: &str, e: &crate::Error) {
        tracing::warn!(relay = %self.config.relay_id, error = %error_chain(e), "outbox relay: {what} failed");
        self.health.state = RelayState::Degraded;
        self.health.last_error = Some(format!("{what}: {}", error_chain(e)));
        self.publish_health();
    }

    fn record_success(&mut self) {
        self.error_backoff = MIN_ERROR_BACKOFF;
        if self.health.state != RelayState::Running || self.health.last_error.is_some() {
            self.health.state = RelayState::Running;
            self.health.last_error = None;
        }
        self.publish_health();
    }

    /// Sleeps after an error, growing the pause up to a cap; returns early
    /// on shutdown.
    async fn back_off(&mut self) {
        let d = self.error_backoff;
        self.error_backoff = (self.error_backoff * 2).min(MAX_ERROR_BACKOFF);
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    pub(super) async fn run(mut self) {
        let relay = self.config.relay_id;
        // Start-up: the schema must exist and not be newer than this crate.
        while !self.stopping() {
            let started = async {
                self.store.check_schema().await?;
                self.store.bucket_count().await
            }
            .await;
            match started {
                Ok(n) => {
                    self.bucket_count = n.max(1);
                    break;
                }
                Err(e) => {
                    self.record_error("start-up", &e);
                    self.back_off().await;
                }
            }
        }
        let signal = self.store.local_signal();
        while !self.stopping() {
            let now = Instant::now();
            if now >= self.next_lease_tick {
                if let Err(e) = self.manage_leases().await {
                    // Keep the leases: renewing them with the same epoch is
                    // safe later, and the deadline keeps us from publishing
                    // meanwhile.
                    self.record_error("lease renewal", &e);
                    self.back_off().await;
                    continue;
                }
            }
            if Instant::now() >= self.next_stats {
                self.refresh_stats().await;
            }
            if self.listener.is_none() && Instant::now() >= self.listener_retry_at {
                match self.store.listen().await {
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
                self.wait(&signal, self.next_lease_tick).await;
                continue;
            }
            match self.round().await {
                Ok(full) => {
                    self.record_success();
                    if !full {
                        let until = self.wake_deadline();
                        self.wait(&signal, until).await;
                    }
                }
                Err(e) => {
                    // Whether the acknowledgement landed is unknown: claim
                    // afresh.
                    self.prefetch = None;
                    self.record_error("publish round", &e);
                    self.back_off().await;
                }
            }
        }
        self.prefetch = None;
        // Give the buckets back so other relays need not wait for expiry.
        let release = Release {
            relay,
            leases: &self.leases,
        };
        if let Err(e) = self.store.release(release).await {
            tracing::warn!(error = %error_chain(&e), "outbox relay: releasing leases failed; they expire on their own");
        }
        let _ = self.store.leave(relay).await;
        self.leases.clear();
        self.health.state = RelayState::Stopped;
        self.publish_health();
        tracing::info!(relay = %relay, "outbox relay stopped");
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
    /// shutdown.
    async fn wait(&mut self, signal: &tokio::sync::Notify, until: Instant) {
        let mut stop = self.stop.clone();
        let sleep = tokio::time::sleep_until(until);
        match self.listener.as_mut() {
            Some(l) => {
                tokio::select! {
                    _ = sleep => {}
                    _ = signal.notified() => {}
                    _ = stop.wait_for(|s| *s) => {}
                    r = l.next() => {
                        if let Err(e) = r {
                            // Notifications may have been missed: drop the
                            // listener, reconnect later and look now.
                            tracing::debug!(error = %error_chain(&e), "outbox relay: LISTEN connection lost");
                            self.listener = None;
                            self.listener_retry_at = Instant::now() + self.config.poll_interval;
                        }
                    }
                }
            }
            None => {
                tokio::select! {
                    _ = sleep => {}
                    _ = signal.notified() => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            }
        }
        if self.next_retry.is_some_and(|r| r <= Instant::now()) {
            self.next_retry = None;
        }
    }

    async fn manage_leases(&mut self) -> Result<()> {
        let relay = self.config.relay_id;
        let ttl = self.config.lease_ttl;
        // Deadlines count from before the request: the database's expiry is
        // later than ours, so we stop publishing before anyone can take
        // over.
        let started = Instant::now();
        let live = self.store.heartbeat(Heartbeat { relay, ttl }).await?;
        let renew = Renew {
            relay,
            leases: &self.leases,
            ttl,
        };
        let mut leases = self.store.renew(renew).await?;
        if leases.len() < self.leases.len() {
            tracing::info!(
                relay = %relay,
                lost = self.leases.len() - leases.len(),
                "outbox relay: leases taken over by another relay"
            );
        }
        let target = (self.bucket_count as usize).div_ceil(live.max(1));
        if leases.len() < target {
            let max = target - leases.len();
            let more = self.store.acquire(Acquire { relay, max, ttl }).await?;
            leases.extend(more);
        } else if leases.len() > target {
            leases.sort_by_key(|l| l.bucket);
            let extra = leases.split_off(target);
            let release = Release {
                relay,
                leases: &extra,
            };
            self.store.release(release).await?;
        }
        leases.sort_by_key(|l| l.bucket);
        if leases != self.leases {
            // Claimed under other leases: its buckets may have changed hands.
            self.prefetch = None;
        }
        self.leases = leases;
        self.lease_deadline = started + ttl.mul_f64(0.8);
        self.next_lease_tick = started + ttl / 3;
        self.publish_health();
        Ok(())
    }

    async fn refresh_stats(&mut self) {
        self.next_stats = Instant::now() + self.config.stats_interval;
        match self.store.stats().await {
            Ok(s) => {
                metrics::gauge!("outbox_pending").set(s.pending as f64);
                metrics::gauge!("outbox_dead_letters").set(s.dead_letters as f64);
                metrics::gauge!("outbox_oldest_pending_age_seconds")
                    .set(s.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64()));
                if let Some(dead) = s.dead_tuples {
                    metrics::gauge!("outbox_dead_tuples").set(dead as f64);
                }
                let xmin_age = s.oldest_xmin_age.unwrap_or_default();
                metrics::gauge!("outbox_oldest_transaction_age_seconds")
                    .set(xmin_age.as_secs_f64());
                let dead = s.dead_tuples.unwrap_or(0);
                if s.autovacuum == Some(false) && dead > SELF_VACUUM_DEAD_ROWS {
                    if self.config.vacuum_if_autovacuum_off {
                        if !self.warned_autovacuum_off {
                            self.warned_autovacuum_off = true;
                            tracing::warn!(
                                "outbox: autovacuum is off on this server; the relay vacuums \
                                 the outbox table itself"
                            );
                        }
                        match self.store.vacuum().await {
                            Ok(()) => metrics::counter!("outbox_self_vacuums_total").increment(1),
                            Err(e) => tracing::warn!(
                                error = %error_chain(&e),
                                "outbox relay: vacuum of the outbox table failed"
                            ),
                        }
                    } else if !self.warned_autovacuum_off {
                        self.warned_autovacuum_off = true;
                        tracing::warn!(
                            dead_tuples = dead,
                            "outbox: autovacuum is off on this server and nothing vacuums the \
                             outbox table: it will grow and claims will slow down"
                        );
                    }
                }
                if xmin_age > Duration::from_secs(60) && s.dead_tuples.unwrap_or(0) > 50_000 {
                    tracing::warn!(
                        oldest_transaction_secs = xmin_age.as_secs(),
                        dead_tuples = s.dead_tuples,
                        "outbox: a transaction open for {}s keeps vacuum from removing {} dead \
                         rows of the outbox table; claims slow down until it ends",
                        xmin_age.as_secs(),
                        s.dead_tuples.unwrap_or(0)
                    );
                }
            }
            Err(e) => {
                tracing::debug!(error = %error_chain(&e), "outbox relay: stats query failed");
            }
        }
        if let Retention::Keep(keep) = self.config.retention {
            let cutoff = self.clock.now()
                - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
            // Bounded work per tick, so a large backlog of expired rows never
            // turns into one long-running delete.
            for _ in 0..10 {
                let purge = Purge {
                    before: cutoff,
                    limit: self.config.purge_batch,
                };
                match self.store.purge_published(purge).await {
                    Ok(n) if n as i64 >= self.config.purge_batch => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(error = %error_chain(&e), "outbox relay: purge failed");
                        break;
                    }
                }
            }
        }
    }

    /// Claims one batch, publishes it and acknowledges it. Returns true if
    /// the batch was full (more may be waiting).
    async fn round(&mut self) -> Result<bool> {
        let limit = self.config.batch_size as i64;
        let (claimed, full) = match self.prefetch.take() {
            Some(mut p) => {
                let got = (&mut p.0).await.map_err(crate::Error::RelayTask)??;
                let full = got.len() as i64 >= limit;
                // Later messages of a key whose earlier one is still pending
                // (or now blocked) wait for the next claim.
                let unsettled = std::mem::take(&mut self.unsettled);
                let kept = got
                    .into_iter()
                    .filter(|c| {
                        c.message
                            .partition_key
                            .as_ref()
                            .is_none_or(|k| !unsettled.contains(k))
                    })
                    .collect();
                (kept, full)
            }
            None => {
                let got = self.claim(Vec::new()).await?;
                let full = got.len() as i64 >= limit;
                (got, full)
            }
        };
        self.unsettled.clear();
        if claimed.is_empty() {
            return Ok(full);
        }
        if full && self.config.prefetch {
            let in_flight: Vec<i64> = claimed.iter().map(|c| c.message.seq).collect();
            let claim = self.claim(in_flight);
            self.prefetch = Some(Prefetch(tokio::spawn(claim)));
        }
        let batch_keys: Vec<(i64, Option<String>)> = claimed
            .iter()
            .map(|c| (c.message.seq, c.message.partition_key.clone()))
            .collect();
        let span = tracing::info_span!(
            "outbox.batch",
            relay = %self.config.relay_id,
            size = claimed.len(),
            published = tracing::field::Empty,
            failed = tracing::field::Empty,
            fenced = tracing::field::Empty,
        );
        let mut claimed = claimed;
        if self.config.key_sequences {
            let store = self.store.clone();
            number_keys(&*store, &mut claimed).await?;
        }
        let acks = self.publish_batch(claimed).instrument(span.clone()).await;
        let retain = matches!(self.config.retention, Retention::Keep(_));
        let batch = AckBatch {
            relay: self.config.relay_id,
            leases: &self.leases,
            acks: &acks,
            retain,
            now: self.clock.now(),
        };
        let report = self.store.ack(batch).instrument(span.clone()).await?;
        if report.fenced > 0 {
            self.prefetch = None;
        } else if self.prefetch.is_some() {
            let done: HashSet<i64> = acks
                .iter()
                .filter(|a| matches!(a.disposition, Disposition::Published))
                .map(|a| a.seq)
                .collect();
            self.unsettled = batch_keys
                .into_iter()
                .filter(|(seq, _)| !done.contains(seq))
                .filter_map(|(_, k)| k)
                .collect();
        }
        let mut published = 0u64;
        let (mut retried, mut dead) = (0u64, 0u64);
        for a in &acks {
            if report.fenced_buckets.contains(&a.bucket) {
                continue;
            }
            match &a.disposition {
                Disposition::Published => published += 1,
                Disposition::Retry { at, .. } => {
                    retried += 1;
                    let when = self.clock.instant_of(*at);
                    self.next_retry = Some(self.next_retry.map_or(when, |r| r.min(when)));
                }
                Disposition::Dead { .. } => dead += 1,
            }
        }
        span.record("published", published);
        span.record("failed", retried + dead);
        span.record("fenced", report.fenced);
        if report.fenced > 0 {
            metrics::counter!("outbox_fenced_total").increment(report.fenced as u64);
            tracing::warn!(
                relay = %self.config.relay_id,
                fenced = report.fenced,
                "outbox relay: acknowledgements refused, the lease changed hands; \
                 the new owner publishes these messages again"
            );
            // Find out which leases are gone before the next round.
            self.next_lease_tick = Instant::now();
        }
        metrics::counter!("outbox_published_total").increment(published);
        metrics::counter!("outbox_retried_total").increment(retried);
        metrics::counter!("outbox_dead_lettered_total").increment(dead);
        self.health.published += published;
        metrics::counter!("outbox_batches_total").increment(1);
        Ok(full)
    }

    /// A claim of this relay's buckets, leaving out the positions in
    /// `exclude` (a batch still in flight); it owns what it needs, so it can
    /// run as a task of its own.
    fn claim(
        &self,
        exclude: Vec<i64>,
    ) -> impl std::future::Future<Output = Result<Vec<Claimed>>> + Send + 'static {
        let buckets: Option<Vec<i32>> = if self.leases.len() as i32 >= self.bucket_count {
            None
        } else {
            Some(self.leases.iter().map(|l| l.bucket).collect())
        };
        let store = self.store.clone();
        let (count, now, limit) = (
            self.bucket_count,
            self.clock.now(),
            self.config.batch_size as i64,
        );
        async move {
            let claim = Claim {
                buckets: buckets.as_deref(),
                bucket_count: count,
                now,
                limit,
                exclude: &exclude,
            };
            store.claim(claim).await
        }
    }

    /// Calls the publisher, renewing the leases while it works, so a slow
    /// destination does not cost the relay its keys. A relay that is truly
    /// stalled renews nothing, and its leases expire as they should.
    ///
    /// The call runs in its own task, so a publisher that panics fails its
    /// batch (transiently) instead of taking the relay down.
    async fn publish_renewing(
        &mut self,
        batch: Vec<OutboxMessage>,
    ) -> Vec<Result<(), PublishError>> {
        let publisher = self.publisher.clone();
        let n = batch.len();
        let publish = tokio::spawn(async move { publisher.publish(&batch).await });
        let publish = async move {
            match publish.await {
                Ok(results) => results,
                Err(e) => {
                    tracing::error!(error = %e, "outbox relay: the publisher panicked");
                    (0..n)
                        .map(|_| Err(PublishError::transient("the publisher panicked")))
                        .collect()
                }
            }
        };
        tokio::pin!(publish);
        let ttl = self.config.lease_ttl;
        loop {
            let renew_at = Instant::now() + ttl / 3;
            tokio::select! {
                results = &mut publish => return results,
                _ = tokio::time::sleep_until(renew_at) => {
                    let started = Instant::now();
                    let renew = Renew {
                        relay: self.config.relay_id,
                        leases: &self.leases,
                        ttl,
                    };
                    match self.store.renew(renew).await {
                        Ok(kept) => {
                            if kept.len() < self.leases.len() {
                                self.prefetch = None;
                                tracing::warn!(
                                    relay = %self.config.relay_id,
                                    "outbox relay: leases lost while publishing"
                                );
                            }
                            self.leases = kept;
                            self.lease_deadline = started + ttl.mul_f64(0.8);
                            self.next_lease_tick = started + ttl / 3;
                        }
                        Err(e) => tracing::warn!(
                            error = %error_chain(&e),
                            "outbox relay: lease renewal during publish failed"
                        ),
                    }
                }
            }
        }
    }

    /// Publishes in waves of at most one message per partition key.
    async fn publish_batch(&mut self, claimed: Vec<Claimed>) -> Vec<Ack> {
        let mut queues: Vec<VecDeque<Claimed>> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for c in claimed {
            match c.message.partition_key.clone() {
                Some(k) => {
                    let i = *by_key.entry(k).or_insert_with(|| {
                        queues.push(VecDeque::new());
                        queues.len() - 1
                    });
                    queues[i].push_back(c);
                }
                None => queues.push(VecDeque::from([c])),
            }
        }
        let mut acks = Vec::new();
        let mut stopped: HashSet<usize> = HashSet::new();
        loop {
            // A bucket lost since the claim (a renewal during the last wave
            // found it taken) belongs to another relay now: publish nothing
            // more of it.
            let owned: HashSet<i32> = self.leases.iter().map(|l| l.bucket).collect();
            let mut wave: Vec<(usize, Claimed)> = Vec::new();
            for (i, q) in queues.iter_mut().enumerate() {
                if stopped.contains(&i) {
                    continue;
                }
                if q.front().is_some_and(|c| !owned.contains(&c.bucket)) {
                    stopped.insert(i);
                    continue;
                }
                if let Some(c) = q.pop_front() {
                    wave.push((i, c));
                }
            }
            if wave.is_empty() {
                break;
            }
            // A lease that may have run out means another relay may own these
            // keys now: publish nothing more, acknowledge what is done.
            if Instant::now() >= self.lease_deadline {
                tracing::warn!(
                    relay = %self.config.relay_id,
                    "outbox relay: lease deadline reached mid-batch; leaving the rest"
                );
                break;
            }
            let batch: Vec<OutboxMessage> = wave.iter().map(|(_, c)| c.message.clone()).collect();
            let mut results = self.publish_renewing(batch.clone()).await;
            if results.len() != batch.len() {
                tracing::error!(
                    expected = batch.len(),
                    got = results.len(),
                    "outbox relay: publisher returned the wrong number of results; \
                     treating the missing ones as transient failures"
                );
                results.resize_with(batch.len(), || {
                    Err(crate::PublishError::transient(
                        "publisher returned no result for this message",
                    ))
                });
                results.truncate(batch.len());
            }
            for ((qi, c), result) in wave.into_iter().zip(results) {
                let m = &c.message;
                let retried = m.attempt > 1;
                let disposition = match result {
                    Ok(()) => Disposition::Published,
                    Err(e) => {
                        let policy = self.config.policy_for(&m.topic);
                        let block_key =
                            policy == OrderingPolicy::Ordered && m.partition_key.is_some();
                        let error = error_chain(&e);
                        let attempt = m.attempt.max(1) as u32;
                        if block_key {
                            stopped.insert(qi);
                        }
                        if !e.is_transient() || self.config.retry.gives_up_after(attempt) {
                            tracing::warn!(id = %m.id, topic = %m.topic, attempt, error = %error, "outbox: message dead-lettered");
                            Disposition::Dead { error, block_key }
                        } else {
                            let delay = e
                                .retry_after()
                                .unwrap_or_else(|| self.config.retry.jittered_delay(attempt))
                                .min(super::retry::MAX_RETRY_DELAY);
                            tracing::debug!(id = %m.id, attempt, ?delay, error = %error, "outbox: publish failed, will retry");
                            let at = self.clock.now()
                                + chrono::Duration::from_std(delay)
                                    .unwrap_or(chrono::Duration::MAX);
                            Disposition::Retry {
                                at,
                                error,
                                block_key,
                            }
                        }
                    }
                };
                acks.push(Ack {
                    seq: m.seq,
                    bucket: c.bucket,
                    partition_key: m.partition_key.clone(),
                    attempts: m.attempt,
                    retried,
                    key_sequence: m.key_sequence,
                    disposition,
                });
            }
        }
        acks
    }
}

/// Gives each keyed message its per-key sequence number: the last one
/// published for the key, plus its rank among the key's messages in this
/// batch. Only the bucket's owner numbers a key, and a number is stored
/// only with a successful, fenced acknowledgement, so a redelivery gets
/// the same number and numbers stay dense.
/// (A free function: the worker holds the listener, which is not `Sync`.)
async fn number_keys(store: &dyn StoreOps, claimed: &mut [Claimed]) -> Result<()> {
    let mut keys: Vec<String> = claimed
        .iter()
        .filter_map(|c| c.message.partition_key.clone())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut last = store.key_sequences(&keys).await?;
    for c in claimed.iter_mut() {
        if let Some(k) = &c.message.partition_key {
            let n = last.entry(k.clone()).or_insert(0);
            *n += 1;
            c.message.key_sequence = Some(*n);
        }
    }
    Ok(())
}
