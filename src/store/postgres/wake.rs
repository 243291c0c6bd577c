//! Waking relays: the in-process signal, the `NOTIFY` task that wakes
//! relays elsewhere after commits, notifications carried in producers'
//! transactions (with [`WakeUp::InTransaction`]), and the `LISTEN` wake
//! source relays wait on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgListener, PgPoolOptions};
use sqlx::{Connection, Executor};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::PgOutbox;
use crate::error::Result;
use crate::store::WakeSource;

/// How a commit wakes relays in other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WakeUp {
    /// Relays in this process wake at once on [`PgOutbox::commit`]; relays
    /// elsewhere on a `NOTIFY` the outbox sends just after the commit
    /// returned, on a connection of its own. The producer's transaction
    /// carries no notification.
    ///
    /// - Each commit through `PgOutbox::commit` (or [`PgOutbox::wake`]) is
    ///   followed by a `NOTIFY` sent after it returned, so no such commit
    ///   waits for the relay's poll.
    /// - The `NOTIFY`s are coalesced and bounded in rate: one at a time, at
    ///   most one per [`notify_interval`](super::PgOutboxBuilder::notify_interval)
    ///   (1 ms) for the outbox and all its clones, each covering every
    ///   commit that returned before it was sent. The first commit after a
    ///   quiet interval is notified at once.
    /// - The connection is opened outside the pool at the first `NOTIFY`,
    ///   and closed within a second of the outbox being dropped (after a
    ///   last `NOTIFY` covering the commits made before, so a service that
    ///   commits and exits at once does not leave its last messages to
    ///   the relays' poll, as long as its runtime lives that long) or its
    ///   pool closed.
    ///
    /// Why not in the transaction: PostgreSQL serializes the commits of
    /// transactions that notify (each holds the notification queue's lock
    /// from just before its commit until the commit is flushed to disk), so
    /// when commits are slow, producers that notify queue behind each
    /// other's flushes. A `NOTIFY` in a transaction of its own writes no
    /// WAL, so its commit waits for no flush and holds that lock briefly.
    ///
    /// Transactions committed without `PgOutbox::commit` are found by the
    /// next `NOTIFY` (any later commit's) or by the relay's poll; call
    /// [`PgOutbox::wake`] after such a commit to wake relays at once. A
    /// transaction that rolls back sends nothing.
    #[default]
    AfterCommit,
    /// Each enqueue adds a `pg_notify` to the producer's transaction:
    /// relays wake on every commit, however it is made, at the price of
    /// serializing the commits of those transactions on the notification
    /// queue's lock (measured: about 40 % of write throughput at 8 writers,
    /// and far less when commits wait for a slow disk).
    InTransaction,
    /// No `NOTIFY`: relays in this process wake on `PgOutbox::commit`,
    /// others on their poll interval.
    LocalOnly,
}

/// An outbox's wake-up settings and bookkeeping.
pub(super) struct WakeState {
    pub(super) mode: WakeUp,
    /// The channel relays `LISTEN` on.
    pub(super) channel: String,
    notify_interval: Duration,
    /// Raised by `commit` for relays in this process.
    pub(super) signal: Arc<Notify>,
    /// Raised by `commit` for the `NOTIFY` task.
    remote: Arc<Notify>,
    /// How many wake-ups `commit` has asked the `NOTIFY` task for (shared
    /// with it, so it can cover the last ones after the outbox is dropped).
    commits: Arc<AtomicU64>,
    /// Set once the `NOTIFY` task runs.
    notifier: OnceLock<()>,
    /// Whether relays were told that `LISTEN` cannot work here.
    said_no_listen: AtomicBool,
}

impl WakeState {
    pub(super) fn new(mode: WakeUp, schema: &str, prefix: &str, notify_interval: Duration) -> Self {
        let channel = format!("outbox_{schema}_{prefix}");
        let channel: String = channel.chars().take(63).collect();
        Self {
            mode,
            channel,
            notify_interval,
            signal: Arc::new(Notify::new()),
            remote: Arc::new(Notify::new()),
            commits: Arc::new(AtomicU64::new(0)),
            notifier: OnceLock::new(),
            said_no_listen: AtomicBool::new(false),
        }
    }
}

impl PgOutbox {
    /// The channel an enqueue's statement notifies in the caller's
    /// transaction: only with [`WakeUp::InTransaction`].
    pub(super) fn carried_channel(&self) -> Option<&str> {
        (self.inner.wake.mode == WakeUp::InTransaction).then_some(self.inner.wake.channel.as_str())
    }

    /// Wakes relays now, as after a commit: those in this process at once,
    /// and with [`WakeUp::AfterCommit`] those elsewhere by a `NOTIFY` sent
    /// from now on (see [`WakeUp::AfterCommit`]). Call it after committing
    /// a transaction that enqueued without [`commit`](Self::commit).
    pub fn wake(&self) {
        let w = &self.inner.wake;
        w.signal.notify_waiters();
        w.signal.notify_one();
        if w.mode == WakeUp::AfterCommit {
            w.commits.fetch_add(1, Ordering::AcqRel);
            self.spawn_notifier();
            w.remote.notify_one();
        }
    }

    fn spawn_notifier(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.inner.wake.notifier.get_or_init(|| {
            let pool = self.inner.pool.clone();
            let remote = self.inner.wake.remote.clone();
            let interval = self.inner.wake.notify_interval;
            // A NOTIFY of its own is one prepared statement in an implicit
            // transaction. A transaction that only notifies writes no WAL of
            // its own, so its commit never waits for a flush (measured: one
            // WAL sync per thousand of them) and holds the notification
            // queue's lock only briefly; an explicit BEGIN/SET/COMMIT around
            // it cost four commands and about four times the server time.
            let notify = self.inner.sql.notify.clone();
            let channel = self.inner.wake.channel.clone();
            // Behind transaction pooling a prepared statement would not
            // survive on the server connection: one simple query instead
            // (one protocol message, so one server connection). The channel
            // is built from validated identifiers.
            let simple_notify = (!self.named()).then(|| format!("NOTIFY \"{channel}\""));
            // The task holds the outbox weakly and ends soon after the last
            // clone of it is dropped, once it covered every commit made
            // before: a service that commits and exits at once wakes the
            // relays for its last messages too, not at their poll.
            let alive = Arc::downgrade(&self.inner);
            let commits = self.inner.wake.commits.clone();
            handle.spawn(async move {
                let mut conn: Option<PgConnection> = None;
                // Wake-ups covered by the last NOTIFY sent, and when it was
                // sent: the next goes no sooner than `interval` after it.
                let mut covered = 0u64;
                let mut last_sent: Option<Instant> = None;
                loop {
                    if pool.is_closed() {
                        return;
                    }
                    let dropped = alive.strong_count() == 0;
                    let asked = commits.load(Ordering::Acquire);
                    if asked == covered {
                        if dropped {
                            return;
                        }
                        // A wake-up asked after the load above leaves a
                        // permit, so this wait cannot miss it.
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), remote.notified()).await;
                        continue;
                    }
                    if let Some(last) = last_sent {
                        tokio::time::sleep_until(last + interval).await;
                    }
                    // Every wake-up counted now was asked after its commit
                    // returned, and the NOTIFY goes out after this load: it
                    // covers them all, and those asked meanwhile too.
                    let asked = commits.load(Ordering::Acquire);
                    let started = Instant::now();
                    let mut delivered = false;
                    // On a connection of its own, outside the pool: no pool
                    // checkout and liveness ping per NOTIFY, and no pool slot
                    // taken from the application. A connection found broken
                    // is replaced and the NOTIFY sent again, once.
                    for _ in 0..2 {
                        if conn.is_none() {
                            match PgConnection::connect_with(&pool.connect_options()).await {
                                Ok(c) => conn = Some(c),
                                Err(e) => {
                                    tracing::debug!(
                                        error = %e,
                                        "outbox NOTIFY connection failed; relays will poll"
                                    );
                                    break;
                                }
                            }
                        }
                        let Some(c) = conn.as_mut() else { break };
                        let sent = match &simple_notify {
                            Some(simple) => c.execute(simple.as_str()).await,
                            None => sqlx::query(&notify).bind(&channel).execute(&mut *c).await,
                        };
                        match sent {
                            Ok(_) => {
                                delivered = true;
                                break;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "outbox NOTIFY failed");
                                conn = None;
                            }
                        }
                    }
                    if delivered {
                        covered = asked;
                        last_sent = Some(started);
                    } else if dropped {
                        // Nobody left to try for: the relays' poll finds
                        // these commits.
                        return;
                    } else {
                        // Not sent: try again shortly, for the same commits.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        });
    }

    /// A `LISTEN` on the outbox's channel, unless notifications are off.
    pub(super) async fn listen_source(&self) -> Result<Option<Box<dyn WakeSource>>> {
        if self.inner.wake.mode == WakeUp::LocalOnly {
            return Ok(None);
        }
        let options = match &self.inner.listen_options {
            Some(options) => options.clone(),
            None if self.inner.statements.transaction_pooling => {
                if !self.inner.wake.said_no_listen.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "outbox relay: LISTEN cannot work through a pooler in transaction \
                         mode; without `PgOutboxBuilder::listen_options` (a direct \
                         connection) relays find messages committed in other processes \
                         at their poll interval"
                    );
                }
                return Ok(None);
            }
            None => self.relay_pool().connect_options().as_ref().clone(),
        };
        // A connection of this listener's own, outside the pools the outbox
        // was given (taken from one of them, it would hold one of its
        // connections for as long as the relay runs, and wait behind the
        // application for it): one per relay, each relay's to reconnect.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(&self.inner.wake.channel).await?;
        Ok(Some(Box::new(PgWake::drain(listener))))
    }
}

/// Wakes a relay on notifications on the outbox's channel.
///
/// A task of its own reads the notifications as they come, whether or not
/// the relay is waiting: a relay busy with a backlog for hours never polls
/// its listener, and unread notifications would fill the server's NOTIFY
/// queue until producers' commits fail. Any number of notifications
/// received while the relay was busy leave one wake-up (a `Notify` permit),
/// so a burst of stale ones costs at most one claim.
struct PgWake {
    signal: Arc<Notify>,
    /// Set by the task when the connection failed: the relay drops this
    /// source, looks now, and listens again later.
    failed: Arc<std::sync::Mutex<Option<sqlx::Error>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PgWake {
    fn drain(mut listener: PgListener) -> Self {
        let signal = Arc::new(Notify::new());
        let failed = Arc::new(std::sync::Mutex::new(None));
        let task = tokio::spawn({
            let (signal, failed) = (signal.clone(), failed.clone());
            async move {
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => signal.notify_one(),
                        // The connection was lost (it is re-established on
                        // the next call): notifications sent meanwhile are
                        // gone, so the relay must look now.
                        Ok(None) => signal.notify_one(),
                        Err(e) => {
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            signal.notify_one();
                            return;
                        }
                    }
                }
            }
        });
        Self {
            signal,
            failed,
            task,
        }
    }
}

impl Drop for PgWake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl WakeSource for PgWake {
    async fn next(&mut self) -> Result<()> {
        self.signal.notified().await;
        match self.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
