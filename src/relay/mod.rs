//! The relay: moves committed messages from the outbox to a publisher.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> outbox::Result<()> {
//! use outbox::{LogPublisher, PgOutbox, Relay};
//!
//! let outbox = PgOutbox::new(pool);
//! outbox.migrate().await?;
//! let relay = Relay::builder(outbox.clone(), LogPublisher::tracing()).spawn()?;
//! // ... serve ...
//! relay.shutdown().await?; // bounded: see RelayHandle::shutdown
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! The key space is split into virtual partitions (buckets). Each running
//! relay leases a fair share of them, renews its leases every third of the
//! lease TTL and picks up the buckets of relays that stopped renewing. A
//! relay reads the due messages of its buckets in position order and
//! publishes them in waves: one message per partition key per wave, so
//! different keys go out together and the same key goes out in order. A
//! publisher that keeps a key's order within a call
//! ([`Publisher::keeps_key_order`](crate::Publisher::keeps_key_order))
//! gets each key's messages as one run instead, in a single call; nothing
//! of a key after its first failure in the call is acknowledged.
//! Every acknowledgement is fenced by the lease's epoch: if the bucket
//! changed hands, the acknowledgement is refused and the new owner
//! publishes the message again.
//!
//! A publisher call that outlives the lease it was made under (renewals
//! fail or find the bucket taken, and the lease's local deadline passes) is
//! abandoned: its messages stay pending, unacknowledged, for the bucket's
//! next owner, and the relay never acknowledges them later.
//!
//! # Shutting down
//!
//! [`RelayHandle::shutdown`] stops claiming at once, gives the publisher
//! call in flight a grace period
//! ([`RelayBuilder::shutdown_grace`], 10 s by default) and then abandons it:
//! its messages stay pending and are published again by the next owner of
//! their buckets (a duplicate if the destination had received them). The
//! relay then acknowledges what was published, gives its buckets back and
//! returns, within the grace period plus at most 2 s for those last store
//! calls, whatever the publisher or the database do.
//!
//! # Publisher panics
//!
//! A publisher call runs in a task of its own: a panic fails its messages
//! transiently (they are retried like any transient failure) and is logged
//! once, with its message, through `tracing`. The process's panic hook
//! still runs first, and the default hook prints every panic to stderr; the
//! library leaves the hook alone, since it belongs to the application.

mod budget;
mod clock;
#[cfg(test)]
mod fleet_scenarios;
pub(crate) mod group;
mod labels;
mod leases;
mod maintenance;
mod numbering;
#[cfg(test)]
mod overlap;
mod pacing;
#[cfg(test)]
mod properties;
mod publish;
mod retry;
mod round;
#[cfg(test)]
mod runs;
#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod scripted;
mod shutdown;
#[cfg(test)]
mod upkeep_scenarios;
mod waves;
mod worker;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use self::group::{
    RelayGroup, RelayGroupBuilder, DEFAULT_BACKLOG_SHARE, DEFAULT_CONCURRENT_ROUNDS,
};
pub use self::retry::RetryPolicy;
use crate::error::{Error, Result};
use crate::publisher::Publisher;
use crate::store::sealed::StoreOps;
use crate::store::Store;

/// What a failing message does to the rest of its partition key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OrderingPolicy {
    /// A failing message holds back the later messages of its key until it
    /// is published, or, once dead-lettered, until it is replayed or
    /// discarded. Other keys keep flowing.
    #[default]
    Ordered,
    /// A failing message is set aside for its retry and the later messages
    /// of its key go on. Successful messages are still published in order.
    Unordered,
}

/// What happens to a message once it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Retention {
    /// Delete it (no bloat).
    #[default]
    Delete,
    /// Move it to the published table and delete it after this long, in
    /// bounded batches.
    Keep(Duration),
}

/// The default of [`RelayBuilder::max_batch_bytes`]: 64 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 64 << 20;

#[derive(Debug, Clone)]
pub(crate) struct RelayConfig {
    pub(crate) relay_id: Uuid,
    pub(crate) batch_size: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) ordering: OrderingPolicy,
    pub(crate) topic_ordering: HashMap<String, OrderingPolicy>,
    pub(crate) retention: Retention,
    pub(crate) stats_interval: Duration,
    pub(crate) purge_batch: i64,
    pub(crate) key_sequences: bool,
    pub(crate) vacuum_if_autovacuum_off: bool,
    pub(crate) prefetch: bool,
    pub(crate) shutdown_grace: Duration,
    pub(crate) trace_link: crate::TraceLink,
    /// The outbox's name on metrics (`outbox` label) and logs.
    pub(crate) labels: labels::Labels,
    /// The group's fair turn for rounds, for a member of a relay group.
    pub(crate) turns: Option<Arc<tokio::sync::Semaphore>>,
    /// The group's pace for backlogs, for a member of a relay group.
    pub(crate) pacing: Option<Arc<pacing::Pacing>>,
}

impl RelayConfig {
    pub(crate) fn policy_for(&self, topic: &str) -> OrderingPolicy {
        self.topic_ordering
            .get(topic)
            .copied()
            .unwrap_or(self.ordering)
    }
}

/// Entry point: `Relay::builder(store, publisher)`.
#[derive(Debug)]
pub struct Relay {
    _private: (),
}

impl Relay {
    /// A relay draining `store` into `publisher`, with defaults: batches of
    /// 500, 1 s poll fallback, 10 s leases, [`RetryPolicy::default`],
    /// [`OrderingPolicy::Ordered`], [`Retention::Delete`], and 10 s for a
    /// publisher call in flight to finish at shutdown.
    pub fn builder<S, P>(store: S, publisher: P) -> RelayBuilder
    where
        S: Store,
        P: Publisher,
    {
        RelayBuilder {
            store: Arc::new(store),
            publisher: Arc::new(publisher),
            config: RelayConfig {
                relay_id: Uuid::now_v7(),
                batch_size: 500,
                max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
                poll_interval: Duration::from_secs(1),
                lease_ttl: Duration::from_secs(10),
                retry: RetryPolicy::default(),
                ordering: OrderingPolicy::default(),
                topic_ordering: HashMap::new(),
                retention: Retention::default(),
                stats_interval: Duration::from_secs(10),
                purge_batch: 1000,
                key_sequences: false,
                vacuum_if_autovacuum_off: true,
                prefetch: true,
                shutdown_grace: Duration::from_secs(10),
                trace_link: crate::TraceLink::default(),
                labels: labels::Labels::default(),
                turns: None,
                pacing: None,
            },
        }
    }
}

/// Configures and starts a relay.
pub struct RelayBuilder {
    store: Arc<dyn StoreOps>,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
}

impl fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RelayBuilder {
    /// Ordering policy for one topic, overriding the default.
    #[must_use]
    pub fn topic_ordering(mut self, topic: impl Into<String>, policy: OrderingPolicy) -> Self {
        self.config.topic_ordering.insert(topic.into(), policy);
        self
    }

    setters! {
        /// Most messages read and published per round (default 500).
        pub fn batch_size(n: usize) => config.batch_size = n;

        /// Most payload bytes a round holds (default
        /// [`DEFAULT_MAX_BATCH_BYTES`], 64 MiB): a claim stops at the first
        /// message that takes it past this, that message included, so a
        /// round holds at most this plus one payload, and always at least
        /// one message. With prefetch on, two rounds' claims can be in
        /// memory at once. Bounds the relay's memory whatever the payload
        /// sizes: 500 messages of 20 MB each are published a few at a time.
        pub fn max_batch_bytes(n: usize) => config.max_batch_bytes = n;

        /// How often to look for messages when no wake-up arrives (default
        /// 1 s). Commits through `commit` and PostgreSQL notifications wake the
        /// relay sooner.
        pub fn poll_interval(d: Duration) => config.poll_interval = d;

        /// How long a relay's leases last without renewal (default 10 s). A
        /// crashed relay's keys wait at most this long before another relay
        /// takes them.
        pub fn lease_ttl(d: Duration) => config.lease_ttl = d;

        /// Retry and dead-letter policy.
        pub fn retry(policy: RetryPolicy) => config.retry = policy;

        /// Default ordering policy on failure (default
        /// [`OrderingPolicy::Ordered`]).
        pub fn ordering(policy: OrderingPolicy) => config.ordering = policy;

        /// Delete published messages (default) or keep them for a while.
        pub fn retention(retention: Retention) => config.retention = retention;

        /// How often gauges (pending, oldest age, dead tuples) are refreshed and
        /// retained messages purged (default 10 s). Of several relays on one
        /// outbox, the one holding bucket 0 does it; the others' gauges read 0,
        /// so the sum or the largest across processes is the outbox's. The
        /// statistics queries count the whole messages table: where they
        /// take longer than a tenth of the interval twice in a row (a
        /// backlog of tens of millions), the next pass waits ten times as
        /// long as they took, so counting takes at most that share of the
        /// time.
        pub fn stats_interval(d: Duration) => config.stats_interval = d;

        /// Whether to number each key's messages 1, 2, 3, ... (default off; see
        /// [`OutboxMessage::key_sequence`](crate::OutboxMessage::key_sequence)).
        /// Costs one upsert per key published, and one indexed read per
        /// batch for the keys whose last number the relay does not know
        /// (it remembers those it stored or read while it holds their
        /// bucket's lease, up to 100,000 keys, for at most a lease TTL):
        /// 0.6 to 0.8 of the relay's throughput without numbers with a
        /// no-op publisher on PostgreSQL, as the next batch is numbered only
        /// once the last one's upsert has landed. Producers pay nothing. Turn it on when
        /// consumers check for gaps (the [inbox](crate::inbox) does).
        pub fn key_sequences(on: bool) => config.key_sequences = on;

        /// Whether the relay vacuums the messages table itself, at most once
        /// per stats interval and when it holds more than 10,000 dead rows, on
        /// a PostgreSQL server whose `autovacuum` is off (default on). The
        /// table's every row dies within moments; unvacuumed, it grows without
        /// bound and claims slow down.
        pub fn vacuum_if_autovacuum_off(on: bool) => config.vacuum_if_autovacuum_off = on;

        /// Whether the relay works on three batches at once while more are
        /// waiting (default on): it claims the next batch while it publishes
        /// the current one, and writes the last one's acknowledgement
        /// meanwhile too. The database's claim and acknowledgement then
        /// overlap the publisher's time instead of adding to it. Off, each
        /// round claims, publishes and acknowledges one batch in turn.
        ///
        /// Order and delivery guarantees are the same either way: the early
        /// claim leaves out the batches in flight (the one being published,
        /// and the one whose acknowledgement has not landed), and the relay
        /// drops from it every message of a key whose earlier message in
        /// either was not published (failed, retried, or left when a lease
        /// ran out), and the whole of it when its leases changed meanwhile;
        /// those messages stay pending and are claimed again in order. A
        /// batch's acknowledgement lands before the next one's is written,
        /// and before the relay renews its leases, numbers keys, claims on
        /// its own, waits for work or stops; one the store refused (a lease
        /// changed hands) sends it to renew its leases before it claims or
        /// numbers again. Each relay then uses up to three pool connections
        /// at once (the early claim, the acknowledgement, a lease renewal
        /// during a long publisher call). In a [relay group](crate::RelayGroup)
        /// a member acknowledges within its own turn, so only the claim
        /// overlaps.
        pub fn prefetch(on: bool) => config.prefetch = on;

        /// How long [`RelayHandle::shutdown`] lets the publisher call in flight
        /// run before abandoning it (default 10 s).
        ///
        /// An abandoned call's messages are not acknowledged: they stay pending
        /// and the next owner of their buckets publishes them, again if the
        /// destination had received them. The store calls that close the relay
        /// (the last acknowledgement, giving the leases back) get at most 2 s
        /// more, and no more than the grace itself, so `shutdown()` also returns
        /// when the database refuses connections. Keep it below the time your
        /// platform allows a stopping process (Kubernetes'
        /// `terminationGracePeriodSeconds`, 30 s by default), less those 2 s.
        pub fn shutdown_grace(d: Duration) => config.shutdown_grace = d;

        /// This relay's id in the lease table (default: a fresh UUIDv7).
        pub fn relay_id(id: Uuid) => config.relay_id = id;

        /// How each `outbox.publish` span relates to the trace stored with
        /// its message (feature `opentelemetry`; default
        /// [`TraceLink::Parent`](crate::TraceLink::Parent)).
        pub fn trace_link(link: crate::TraceLink) => config.trace_link = link;
    }

    /// Names the outbox this relay serves: every metric it records carries
    /// the label `outbox="<name>"`, and its logs say the name. For
    /// processes that run relays over several outboxes; a
    /// [`RelayGroup`] names its members itself. The name must be 1 to 128
    /// characters, none of them a control character.
    #[must_use]
    pub fn outbox_name(mut self, name: &str) -> Self {
        self.config.labels = labels::Labels::named(name);
        self
    }

    fn validate(&self) -> Result<()> {
        let c = &self.config;
        let bad = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if c.batch_size == 0 || c.batch_size > 100_000 {
            return bad("batch_size", "must be between 1 and 100000");
        }
        if c.max_batch_bytes == 0 || c.max_batch_bytes > i64::MAX as usize {
            return bad("max_batch_bytes", "must be between 1 and i64::MAX");
        }
        const DAY: Duration = Duration::from_secs(86_400);
        if c.poll_interval.is_zero() || c.poll_interval > DAY {
            return bad("poll_interval", "must be between 1 ns and one day");
        }
        if c.lease_ttl < Duration::from_millis(300) || c.lease_ttl > Duration::from_secs(3600) {
            return bad("lease_ttl", "must be between 300 ms and one hour");
        }
        if c.stats_interval.is_zero() || c.stats_interval > DAY {
            return bad("stats_interval", "must be between 1 ns and one day");
        }
        if c.shutdown_grace.is_zero() || c.shutdown_grace > Duration::from_secs(3600) {
            return bad("shutdown_grace", "must be between 1 ns and one hour");
        }
        if let Retention::Keep(d) = c.retention {
            if d.is_zero() || d > 3650 * DAY {
                return bad(
                    "retention",
                    "Keep needs a duration between 1 ns and ten years",
                );
            }
        }
        if let Some(name) = c.labels.name() {
            group::validate_name(name)?;
        }
        c.retry.validate()
    }

    /// Validates the configuration and starts the relay on the current
    /// tokio runtime. Database errors after start are retried with backoff
    /// and reported through [`RelayHandle::health`].
    ///
    /// Dropping the handle asks the relay to stop, like
    /// [`RelayHandle::shutdown`] without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a setting out of its range (batch size, intervals, lease
    /// TTL, shutdown grace, retry policy), named in the error; nothing is started then.
    pub fn spawn(self) -> Result<RelayHandle> {
        self.validate()?;
        let (stop_tx, stop_rx) = watch::channel(None);
        let (health_tx, health_rx) = watch::channel(Health::starting());
        let health_tx = Arc::new(health_tx);
        let shutdown = shutdown::Shutdown::new(stop_rx, self.config.shutdown_grace);
        let span = match self.config.labels.name() {
            Some(name) => tracing::info_span!("outbox.relay", outbox = name),
            None => tracing::Span::none(),
        };

        let worker = worker::Worker::new(
            self.store,
            self.publisher,
            self.config,
            shutdown,
            health_tx.clone(),
        );
        let join = tokio::spawn(tracing::Instrument::instrument(worker.run(), span));
        Ok(RelayHandle {
            stop: stop_tx,
            health_tx,
            health: health_rx,
            join: Some(join),
        })
    }
}

/// A running relay. Dropping it stops the relay.
#[derive(Debug)]
#[must_use = "dropping the handle stops the relay"]
pub struct RelayHandle {
    /// When the stop was asked for: the grace period counts from then.
    stop: watch::Sender<Option<tokio::time::Instant>>,
    health_tx: Arc<watch::Sender<Health>>,
    health: watch::Receiver<Health>,
    join: Option<JoinHandle<()>>,
}

impl RelayHandle {
    /// Stops the relay, within a bounded time.
    ///
    /// The relay claims nothing more and makes no new publisher call. The
    /// call in flight gets the grace period
    /// ([`RelayBuilder::shutdown_grace`], 10 s by default) to finish; what
    /// it publishes is acknowledged. A call still running then is
    /// abandoned: its messages are not acknowledged and stay pending, so
    /// the next owner of their buckets publishes them (again, if the
    /// destination had received them: the duplicate window of a shutdown).
    /// The relay gives its leases back so other relays take over at once,
    /// and returns. The store calls that close it get at most 2 s past the
    /// grace period (and no more than the grace itself): a database that
    /// refuses connections cannot hold `shutdown()` for a pool's acquire
    /// timeout; leases it could not give back expire on their own.
    ///
    /// Meanwhile [`health`](Self::health) reports [`RelayState::Stopping`],
    /// with the buckets still held; once `shutdown()` returns it reports
    /// [`RelayState::Stopped`]. Nothing committed is lost.
    ///
    /// # Errors
    ///
    /// [`Error::RelayTask`] if the relay's task ended abnormally (it panicked); the relay is
    /// stopped either way.
    pub async fn shutdown(mut self) -> Result<()> {
        self.ask_to_stop();
        let joined = match self.join.take() {
            Some(j) => j.await.map_err(Error::RelayTask),
            None => Ok(()),
        };
        // The relay reports `Stopped` itself on its way out; a task that
        // ended abnormally could not.
        self.health_tx.send_if_modified(|h| {
            let stopped = h.state == RelayState::Stopped && h.leased_buckets == 0;
            if !stopped {
                h.state = RelayState::Stopped;
                h.leased_buckets = 0;
            }
            !stopped
        });
        joined
    }

    /// Asks the relay to stop, once: the first request's instant starts
    /// the grace period.
    fn ask_to_stop(&self) {
        let now = tokio::time::Instant::now();
        self.stop.send_if_modified(|asked| {
            let first = asked.is_none();
            if first {
                *asked = Some(now);
            }
            first
        });
        // Said at once, also while the relay waits on a call it cannot
        // interrupt; its own reports keep saying it until it has stopped.
        self.health_tx.send_if_modified(|h| {
            let running = h.state != RelayState::Stopped && h.state != RelayState::Stopping;
            if running {
                h.state = RelayState::Stopping;
            }
            running
        });
    }

    /// The relay's current health. A relay whose task ended without
    /// stopping (it panicked) reads [`RelayState::Stopped`], with the
    /// reason as its last error.
    pub fn health(&self) -> Health {
        let mut h = self.health.borrow().clone();
        let ended = self.join.as_ref().is_some_and(JoinHandle::is_finished);
        if ended && h.state != RelayState::Stopped {
            h.state = RelayState::Stopped;
            h.leased_buckets = 0;
            h.last_error = Some("the relay's task ended abnormally (it panicked)".to_owned());
        }
        h
    }

    /// A receiver that sees every health change.
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.ask_to_stop();
    }
}

/// A relay's state, for health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The relay's phase.
    pub state: RelayState,
    /// Buckets (virtual partitions) currently leased.
    pub leased_buckets: usize,
    /// Messages published and acknowledged since start.
    pub published: u64,
    /// The last error, cleared by the next successful round.
    pub last_error: Option<String>,
}

impl Health {
    fn starting() -> Self {
        Self {
            state: RelayState::Starting,
            leased_buckets: 0,
            published: 0,
            last_error: None,
        }
    }
}

/// A relay's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayState {
    /// Connecting and checking the schema.
    Starting,
    /// Working normally.
    Running,
    /// Healthy, but other relays hold every bucket (more relays run than
    /// there is work to share): it takes over when one leaves or stalls.
    StandingBy,
    /// The last database round failed; retrying with backoff.
    Degraded,
    /// The database is reachable, but the publisher failed every message
    /// of the last batch that had any, and none succeeded since, while a
    /// retry is scheduled or within a minute of the failure: the broker is
    /// down, refuses, or every message waiting is poison. `last_error` holds the publisher's error; the
    /// gauge `outbox_relay_publish_failing` is 1 meanwhile.
    PublishFailing,
    /// Asked to stop: finishing (or abandoning) the publisher call in
    /// flight and giving its buckets back.
    Stopping,
    /// Stopped after a shutdown request.
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::InMemoryPublisher;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn a_shutdown_grace_outside_its_range_is_refused_at_spawn() {
        for bad in [Duration::ZERO, Duration::from_secs(3601)] {
            let spawned = Relay::builder(MemoryStore::new(1), InMemoryPublisher::new())
                .shutdown_grace(bad)
                .spawn();
            match spawned {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "shutdown_grace"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let b = Relay::builder(MemoryStore::new(1), InMemoryPublisher::new());
        assert_eq!(b.config.shutdown_grace, Duration::from_secs(10), "default");
        let b = b.shutdown_grace(Duration::from_secs(3600));
        assert!(b.validate().is_ok());
    }
}
