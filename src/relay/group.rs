//! Relay groups: one process relaying many outboxes (a database, or a
//! schema, per tenant or per shard), added and removed while it runs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Semaphore};

use super::budget::{Budget, Budgeted};
use super::pacing::Pacing;
use super::{labels::Labels, Health, RelayBuilder, RelayHandle};
use crate::error::{Error, Result};

/// The default of [`RelayGroupBuilder::concurrent_rounds`].
pub const DEFAULT_CONCURRENT_ROUNDS: usize = 16;

/// The default of [`RelayGroupBuilder::backlog_share`].
pub const DEFAULT_BACKLOG_SHARE: f64 = 1.0;

/// Most characters in an outbox's name.
const MAX_NAME_CHARS: usize = 128;

/// Checks an outbox name: 1 to 128 characters, no control characters (it
/// becomes a metric label and a log field).
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "is empty".to_owned()
    } else if name.chars().count() > MAX_NAME_CHARS {
        format!("is longer than {MAX_NAME_CHARS} characters")
    } else if name.chars().any(char::is_control) {
        format!("{name:?} holds a control character")
    } else {
        return Ok(());
    };
    Err(Error::InvalidConfig {
        field: "outbox_name",
        reason,
    })
}

/// Many outboxes relayed by one process: one [`Relay`](super::Relay) per
/// outbox, each named, taking turns for their rounds.
///
/// ```no_run
/// # async fn demo(tenants: Vec<(String, sqlx::PgPool)>) -> outbox::Result<()> {
/// use std::sync::Arc;
/// use outbox::{LogPublisher, PgOutbox, Relay, RelayGroup};
///
/// let publisher = Arc::new(LogPublisher::tracing());
/// let group = RelayGroup::builder().concurrent_rounds(4).build()?;
/// for (name, pool) in tenants {
///     let outbox = PgOutbox::new(pool);
///     group.add(&name, Relay::builder(outbox, publisher.clone()))?;
/// }
/// // ... later, a tenant leaves:
/// group.remove("tenant-42").await?;
/// // ... and at exit:
/// group.shutdown().await?;
/// # Ok(()) }
/// ```
///
/// # Fair turns
///
/// A member claims, publishes and acknowledges a batch (a round) only in
/// its turn: at most [`concurrent_rounds`](RelayGroupBuilder::concurrent_rounds)
/// members run a round at once, and members queue for a turn first come,
/// first served. A member with a backlog goes to the back of the queue
/// after each batch, so an outbox with a million messages waiting delays
/// another's new message by at most the rounds queued ahead of it, never
/// by its backlog. A round that outlasts the lease TTL (a publisher hung on
/// one tenant's broker) gives its turn to the next member and goes on
/// without it. Lease renewals, wake-ups, parking and statistics do not
/// wait for turns.
///
/// Turns bound the rounds, not the work a backlog's rounds make for the
/// database and the process: with
/// [`backlog_share`](RelayGroupBuilder::backlog_share) below 1, a member
/// draining a backlog pauses after each full batch while other members
/// have fresh messages, so its rounds take only that share of its time;
/// alone, it drains at full speed.
///
/// # Connections
///
/// Each member keeps its own store and pool: a connection reaches one
/// database, so members of different databases cannot share one. A
/// member needs up to five at once: its wake-up `LISTEN` (PostgreSQL,
/// taken from its pool unless `PgOutboxBuilder::listen_options` gives it
/// one of its own), the claim of its next batch, the acknowledgement or a
/// lease renewal, its statistics pass and its parking pass. Give each
/// member a pool of five; a pool too small to renew the leases on time
/// while a round runs makes the member abandon its publisher calls (they
/// are published again).
///
/// [`max_connections`](RelayGroupBuilder::max_connections) bounds the
/// connections the members use at once, all together; the turns bound the
/// rounds. What the group holds is that, plus one listening connection per
/// PostgreSQL member, plus the idle connections its members' pools keep
/// between calls: give them `min_connections(0)` and a short
/// `idle_timeout` so quiet members hand theirs back. Without a budget,
/// plan for up to five connections per outbox per group process, and
/// PostgreSQL's `max_connections` accordingly.
///
/// # Several processes
///
/// Run the same group in several processes: each member is an ordinary
/// relay, so the members of one outbox share its buckets through the
/// fenced leases, and a process that dies hands its buckets over when its
/// leases expire, as a lone relay's would.
///
/// # Health and metrics
///
/// Every metric a member records carries `outbox="<name>"`;
/// [`health`](Self::health) reports each member by name. Cloning the group
/// is cheap and shares it; when the last clone is dropped every member is
/// asked to stop.
#[derive(Clone)]
pub struct RelayGroup {
    inner: Arc<Inner>,
}

struct Inner {
    turns: Arc<Semaphore>,
    concurrent_rounds: usize,
    /// The connection budget, if it has one.
    budget: Option<Arc<Budget>>,
    /// The pace of backlogs while others have fresh messages.
    pacing: Arc<Pacing>,
    members: Mutex<BTreeMap<String, RelayHandle>>,
}

impl fmt::Debug for RelayGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayGroup")
            .field("concurrent_rounds", &self.inner.concurrent_rounds)
            .field(
                "max_connections",
                &self.inner.budget.as_ref().map(|b| b.size()),
            )
            .field("outboxes", &self.names())
            .finish()
    }
}

/// Configures a [`RelayGroup`].
#[derive(Debug, Clone)]
pub struct RelayGroupBuilder {
    concurrent_rounds: usize,
    max_connections: Option<usize>,
    backlog_share: f64,
}

impl RelayGroupBuilder {
    /// Most members that claim, publish and acknowledge at once (default
    /// [`DEFAULT_CONCURRENT_ROUNDS`], 16; between 1 and 1024). More lets
    /// slow publishers overlap; fewer holds fewer connections busy.
    #[must_use]
    pub fn concurrent_rounds(mut self, n: usize) -> Self {
        self.concurrent_rounds = n;
        self
    }

    /// The group's connection budget: most store calls (claims,
    /// acknowledgements, lease renewals, statistics, parking...) its
    /// members run at once, all members together (between 2 and 65536;
    /// none by default). Each call holds a connection while it runs, so
    /// this bounds the connections the group uses at once, shared by
    /// whichever members have work: a quiet tenant's share goes to a busy
    /// one. Calls beyond it wait, first come, first served.
    ///
    /// Not counted: each PostgreSQL member's wake-up `LISTEN` connection,
    /// held for as long as the member runs, and the idle connections
    /// members' pools keep between calls (see [`RelayGroup`]'s
    /// *Connections*). A quarter of the budget (at least one connection)
    /// is kept for lease calls, so renewals do not queue behind rounds.
    /// Give it about three connections per round running at once
    /// ([`concurrent_rounds`](Self::concurrent_rounds)): the claim of the
    /// next batch beside the acknowledgement of the last, and the
    /// members' parking and statistics passes; a quarter of that goes to
    /// lease calls. A smaller budget slows rounds down, and one too small
    /// to renew every member's leases on time (each renews every few
    /// seconds) makes members abandon their publisher calls (they are
    /// published again, a lapse each logs).
    #[must_use]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// The share of time a member draining a backlog spends in rounds
    /// while other members have fresh messages (more than 0, at most 1;
    /// default [`DEFAULT_BACKLOG_SHARE`], 1: no pause). Below 1, after each
    /// full batch such a member pauses (up to half a second) so that its
    /// rounds take this share of its time: its claims and acknowledgements
    /// leave the database and the process room for the others' messages.
    /// Alone, or once the others have had nothing new for a second, it
    /// drains at full speed. Worth trying where the others' latency
    /// matters more than the backlog's drain and the database's CPU is
    /// the bottleneck; measure it (the benchmark's `--group-backlog-share`):
    /// on a saturated two-core machine its effect was lost in the noise.
    #[must_use]
    pub fn backlog_share(mut self, share: f64) -> Self {
        self.backlog_share = share;
        self
    }

    /// An empty group.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (`concurrent_rounds`) for a value outside
    /// 1 to 1024, (`max_connections`) for one outside 2 to 65536.
    pub fn build(self) -> Result<RelayGroup> {
        if !(1..=1024).contains(&self.concurrent_rounds) {
            return Err(Error::InvalidConfig {
                field: "concurrent_rounds",
                reason: format!("must be between 1 and 1024, not {}", self.concurrent_rounds),
            });
        }
        if !(self.backlog_share > 0.0 && self.backlog_share <= 1.0) {
            return Err(Error::InvalidConfig {
                field: "backlog_share",
                reason: format!(
                    "must be more than 0 and at most 1, not {}",
                    self.backlog_share
                ),
            });
        }
        if let Some(n) = self.max_connections.filter(|n| !(2..=65536).contains(n)) {
            return Err(Error::InvalidConfig {
                field: "max_connections",
                reason: format!("must be between 2 and 65536, not {n}"),
            });
        }
        Ok(RelayGroup {
            inner: Arc::new(Inner {
                turns: Arc::new(Semaphore::new(self.concurrent_rounds)),
                concurrent_rounds: self.concurrent_rounds,
                budget: self.max_connections.map(|n| Arc::new(Budget::new(n))),
                pacing: Arc::new(Pacing::new(self.backlog_share)),
                members: Mutex::new(BTreeMap::new()),
            }),
        })
    }
}

impl RelayGroup {
    /// Checks an outbox name as [`add`](Self::add) does: 1 to 128
    /// characters, no control characters (it becomes a metric label, a
    /// log field and, in tools, a table cell).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (field `outbox_name`) saying what is wrong.
    pub fn validate_name(name: &str) -> Result<()> {
        validate_name(name)
    }

    /// A group builder with defaults.
    pub fn builder() -> RelayGroupBuilder {
        RelayGroupBuilder {
            concurrent_rounds: DEFAULT_CONCURRENT_ROUNDS,
            max_connections: None,
            backlog_share: DEFAULT_BACKLOG_SHARE,
        }
    }

    fn members(&self) -> MutexGuard<'_, BTreeMap<String, RelayHandle>> {
        // A panic while the map was held cannot leave it half-changed: every
        // change is one insert or one remove.
        self.inner
            .members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts relaying the outbox of `relay` under `name`, on the current
    /// tokio runtime. The builder keeps its own settings (batch size,
    /// retry policy, publisher...); the group names it (see
    /// [`RelayBuilder::outbox_name`]) and gives it turns.
    ///
    /// A name removed with [`remove`](Self::remove) can be added again at
    /// once, when `remove` has returned.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`]: `outbox_name` for a bad name or one
    /// already in the group, or the setting of `relay` that is out of its
    /// range. Nothing is started then.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`RelayBuilder::spawn`] does.
    pub fn add(&self, name: &str, relay: RelayBuilder) -> Result<()> {
        validate_name(name)?;
        let mut members = self.members();
        if members.contains_key(name) {
            return Err(Error::InvalidConfig {
                field: "outbox_name",
                reason: format!("{name:?} is already in the group"),
            });
        }
        let mut relay = relay;
        relay.config.labels = Labels::named(name);
        relay.config.turns = Some(self.inner.turns.clone());
        relay.config.pacing = Some(self.inner.pacing.clone());
        if let Some(budget) = &self.inner.budget {
            relay.store = Arc::new(Budgeted::new(relay.store, budget.clone()));
        }
        let handle = relay.spawn()?;
        members.insert(name.to_owned(), handle);
        tracing::info!(outbox = name, "outbox relay group: outbox added");
        Ok(())
    }

    /// Stops relaying the outbox named `name`, as
    /// [`RelayHandle::shutdown`] does (bounded by its shutdown grace), and
    /// returns whether the group had it. Its messages stay in its database
    /// for the next relay, its leases are given back at once, and its
    /// gauges read 0. Until this returns, the name is not in the group but
    /// its relay may still be finishing: wait for it before adding the
    /// name again.
    ///
    /// # Errors
    ///
    /// [`Error::RelayTask`] if the member's task had panicked; it is out of
    /// the group either way.
    pub async fn remove(&self, name: &str) -> Result<bool> {
        let Some(handle) = self.members().remove(name) else {
            return Ok(false);
        };
        let stopped = handle.shutdown().await;
        tracing::info!(outbox = name, "outbox relay group: outbox removed");
        stopped.map(|()| true)
    }

    /// How many of the connection budget's calls run now (see
    /// [`RelayGroupBuilder::max_connections`]); `None` without a budget.
    pub fn connections_in_use(&self) -> Option<usize> {
        Some(self.inner.budget.as_ref()?.in_use())
    }

    /// The names of the outboxes in the group, in order.
    pub fn names(&self) -> Vec<String> {
        self.members().keys().cloned().collect()
    }

    /// How many outboxes the group relays.
    pub fn len(&self) -> usize {
        self.members().len()
    }

    /// Whether the group relays no outbox.
    pub fn is_empty(&self) -> bool {
        self.members().is_empty()
    }

    /// Each member's health, by outbox name.
    pub fn health(&self) -> BTreeMap<String, Health> {
        self.members()
            .iter()
            .map(|(name, h)| (name.clone(), h.health()))
            .collect()
    }

    /// A receiver of every health change of the member named `name`.
    pub fn watch_health(&self, name: &str) -> Option<watch::Receiver<Health>> {
        self.members().get(name).map(RelayHandle::watch_health)
    }

    /// Stops every member at once, each bounded by its shutdown grace, and
    /// empties the group (outboxes added meanwhile keep running).
    ///
    /// # Errors
    ///
    /// [`Error::RelayTask`] naming no member if one's task had panicked;
    /// all the others are stopped first.
    pub async fn shutdown(&self) -> Result<()> {
        let members = std::mem::take(&mut *self.members());
        let mut stops = tokio::task::JoinSet::new();
        for (name, handle) in members {
            stops.spawn(async move { (name, handle.shutdown().await) });
        }
        let mut first_error = None;
        while let Some(joined) = stops.join_next().await {
            let outcome = match joined {
                Ok((name, Err(e))) => {
                    tracing::warn!(outbox = %name, error = %e, "outbox relay group: member ended abnormally");
                    Err(e)
                }
                Ok((_, Ok(()))) => Ok(()),
                Err(e) => Err(Error::RelayTask(e)),
            };
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::InMemoryPublisher;
    use crate::relay::budget::guarded_store_ops;
    use crate::relay::{Relay, RelayState};
    use crate::store::memory::MemoryStore;

    #[test]
    fn names_and_settings_out_of_range_are_refused() {
        for bad in ["", "a\nb", &"x".repeat(129)] {
            match validate_name(bad) {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "outbox_name"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        validate_name(&"é".repeat(128)).expect("128 characters");
        for bad in [0, 1025] {
            match RelayGroup::builder().concurrent_rounds(bad).build() {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "concurrent_rounds"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        for bad in [0.0, -0.5, 1.01, f64::NAN] {
            match RelayGroup::builder().backlog_share(bad).build() {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "backlog_share"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        RelayGroup::builder()
            .backlog_share(1.0)
            .build()
            .expect("1: no pause");
    }

    /// Counts the store calls of every member in flight at once; each call
    /// lasts at least 2 ms, so calls that may overlap do.
    #[derive(Debug)]
    struct Counted {
        inner: Arc<dyn crate::store::sealed::StoreOps>,
        calls: Arc<InFlight>,
    }

    #[derive(Debug, Default)]
    struct InFlight {
        now: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    struct Call(Arc<InFlight>);

    impl Drop for Call {
        fn drop(&mut self) {
            self.0.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Counted {
        async fn enter(&self) -> Call {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.calls.now.fetch_add(1, SeqCst) + 1;
            // Counted out on drop, also if the call is abandoned.
            let call = Call(self.calls.clone());
            self.calls.most.fetch_max(now, SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            call
        }
    }

    guarded_store_ops!(Counted, inner, |this, _op| this.enter().await);
    impl crate::store::Store for Counted {}

    /// Eight members with a backlog each, eight turns: the most store
    /// calls in flight at once, all members together.
    async fn most_calls_at_once(max_connections: Option<usize>) -> usize {
        use crate::relay::scripted::message;
        let mut builder = RelayGroup::builder().concurrent_rounds(8);
        if let Some(n) = max_connections {
            builder = builder.max_connections(n);
        }
        let group = builder.build().unwrap();
        let calls = Arc::new(InFlight::default());
        let publisher = InMemoryPublisher::new();
        for member in 0..8 {
            let store = MemoryStore::new(4);
            for i in 0..100 {
                store.enqueue(message(&format!("{member}-{i}"), Some(&format!("k{i}"))));
            }
            let counted = Counted {
                inner: Arc::new(store),
                calls: calls.clone(),
            };
            let relay = Relay::builder(counted, publisher.clone()).batch_size(10);
            group.add(&format!("m{member}"), relay).unwrap();
        }
        while publisher.len() < 800 {
            if let Some(n) = max_connections {
                assert!(group.connections_in_use().unwrap() <= n);
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        group.shutdown().await.unwrap();
        assert_eq!(group.connections_in_use(), max_connections.map(|_| 0));
        calls.most.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_never_run_more_store_calls_at_once_than_the_connection_budget() {
        // Without a budget, eight members with work overlap their calls
        // beyond three: the count can see a budget broken.
        let unbounded = most_calls_at_once(None).await;
        assert!(
            unbounded > 3,
            "only {unbounded} calls at once without a budget"
        );
        let bounded = most_calls_at_once(Some(3)).await;
        assert!(bounded <= 3, "{bounded} calls at once within a budget of 3");
        assert!(bounded >= 2, "the budget's room went unused: {bounded}");
        for bad in [0, 1, 65537] {
            match RelayGroup::builder().max_connections(bad).build() {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "max_connections"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    /// Publishes after a pause longer than any scheduling delay, and logs
    /// each message's tag in publish order across every member.
    #[derive(Clone, Default)]
    struct Ledger(Arc<Mutex<Vec<String>>>);

    #[async_trait::async_trait]
    impl crate::Publisher for Ledger {
        async fn publish(
            &self,
            batch: &[crate::OutboxMessage],
        ) -> Vec<std::result::Result<(), crate::PublishError>> {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut log = self.0.lock().unwrap();
            log.extend(batch.iter().map(crate::relay::scripted::tag));
            batch.iter().map(|_| Ok(())).collect()
        }
    }

    impl Ledger {
        fn backlog_published(&self) -> usize {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter(|t| t.starts_with("backlog"))
                .count()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_takes_turns_with_the_other_outboxes_instead_of_starving_them() {
        use crate::relay::scripted::message;
        const BACKLOG: usize = 1000;
        const BATCH: usize = 5;
        let group = RelayGroup::builder().concurrent_rounds(1).build().unwrap();
        let ledger = Ledger::default();
        let busy = MemoryStore::new(4);
        for i in 0..BACKLOG {
            let key = format!("k{}", i % 50);
            busy.enqueue(message(&format!("backlog-{i}"), Some(&key)));
        }
        let quiet = MemoryStore::new(4);
        group
            .add(
                "busy",
                Relay::builder(busy.clone(), ledger.clone()).batch_size(BATCH),
            )
            .unwrap();
        group
            .add(
                "quiet",
                Relay::builder(quiet.clone(), ledger.clone()).batch_size(BATCH),
            )
            .unwrap();
        while ledger.backlog_published() < 2 * BATCH {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        for probe in 0..5 {
            let tag = format!("probe-{probe}");
            let before = ledger.backlog_published();
            quiet.enqueue(message(&tag, Some("q")));
            let at = loop {
                let log = ledger.0.lock().unwrap().clone();
                if let Some(i) = log.iter().position(|t| *t == tag) {
                    break log[..i].iter().filter(|t| t.starts_with("backlog")).count();
                }
                drop(log);
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            };
            // The busy outbox's round in flight, and at most one more that
            // took the turn before the quiet one queued for it.
            assert!(
                at - before <= 2 * BATCH,
                "{tag} waited for {} backlog messages",
                at - before
            );
            assert!(at < BACKLOG, "{tag} went out only after the backlog");
        }
        group.shutdown().await.unwrap();
    }

    /// Never answers, like a broker behind a black-holed connection; says
    /// when it is first called.
    struct Hung(Arc<tokio::sync::Notify>);

    #[async_trait::async_trait]
    impl crate::Publisher for Hung {
        async fn publish(
            &self,
            _: &[crate::OutboxMessage],
        ) -> Vec<std::result::Result<(), crate::PublishError>> {
            self.0.notify_one();
            std::future::pending().await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_hung_on_its_broker_gives_its_turn_up_after_the_lease_ttl() {
        use crate::relay::scripted::message;
        let group = RelayGroup::builder().concurrent_rounds(1).build().unwrap();
        let hung = MemoryStore::new(1);
        hung.enqueue(message("stuck", Some("k")));
        let ttl = std::time::Duration::from_millis(500);
        let called = Arc::new(tokio::sync::Notify::new());
        group
            .add(
                "hung",
                Relay::builder(hung.clone(), Hung(called.clone())).lease_ttl(ttl),
            )
            .unwrap();
        // It holds the only turn, hung.
        called.notified().await;
        let fine = MemoryStore::new(1);
        let publisher = InMemoryPublisher::new();
        group
            .add(
                "fine",
                Relay::builder(fine.clone(), publisher.clone()).lease_ttl(ttl),
            )
            .unwrap();
        fine.enqueue(message("goes", Some("k")));
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while publisher.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the other member never got a turn");
        assert!(hung.published().is_empty());
        assert!(group.remove("fine").await.unwrap());
        // The hung call is abandoned after the shutdown grace.
        drop(group);
    }

    #[tokio::test]
    async fn members_are_added_by_unique_name_and_removed_while_the_rest_run() {
        let group = RelayGroup::builder().concurrent_rounds(1).build().unwrap();
        let publisher = InMemoryPublisher::new();
        for name in ["b", "a"] {
            group
                .add(name, Relay::builder(MemoryStore::new(1), publisher.clone()))
                .unwrap();
        }
        match group.add("a", Relay::builder(MemoryStore::new(1), publisher.clone())) {
            Err(Error::InvalidConfig { field, reason }) => {
                assert_eq!(field, "outbox_name");
                assert!(reason.contains("already"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match group.add(
            "c",
            Relay::builder(MemoryStore::new(1), publisher.clone()).batch_size(0),
        ) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "batch_size"),
            other => panic!("{other:?}"),
        }
        assert_eq!(group.names(), ["a", "b"]);
        let mut b = group.watch_health("b").unwrap();
        b.wait_for(|h| h.state == RelayState::Running)
            .await
            .unwrap();
        assert!(group.remove("b").await.unwrap());
        assert!(!group.remove("b").await.unwrap(), "already gone");
        assert_eq!(b.borrow().state, RelayState::Stopped);
        assert_eq!(group.names(), ["a"]);
        let health = group.health();
        assert_eq!(health.len(), 1);
        assert_ne!(health["a"].state, RelayState::Stopped);
        let mut a = group.watch_health("a").unwrap();
        group.shutdown().await.unwrap();
        assert!(group.is_empty());
        a.wait_for(|h| h.state == RelayState::Stopped)
            .await
            .unwrap();
    }
}
