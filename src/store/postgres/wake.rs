//! Waking relays: the in-process signal, notifications carried by enqueues,
//! the `NOTIFY` task for commits no enqueue covered, and the `LISTEN` wake
//! source relays wait on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor};
use tokio::sync::Notify;

use super::PgOutbox;
use crate::error::Result;
use crate::store::WakeSource;

/// How a commit wakes relays in other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WakeUp {
    /// Relays in this process wake at once on [`PgOutbox::commit`]; relays
    /// elsewhere are woken by notifications spread thin over the commits:
    ///
    /// - The first enqueue after [`notify_interval`](super::PgOutboxBuilder::notify_interval)
    ///   (1 ms) without one carries a `pg_notify` in the caller's
    ///   transaction, delivered when it commits. Under load one transaction
    ///   in every so many pays for it, and no transaction of its own is
    ///   spent on waking relays.
    /// - A commit made through `PgOutbox::commit` that no later enqueue
    ///   covered within twice the interval (at least 1 ms), such as the
    ///   last of a burst, gets a `NOTIFY` of its own, sent on one
    ///   connection outside the pool (opened at the first such `NOTIFY`,
    ///   closed within a second of the outbox being dropped or its pool
    ///   closed).
    ///
    /// Transactions committed without `PgOutbox::commit` are woken by the
    /// next carried notification or found by the relay's poll, and so are
    /// commits just before an enqueue whose transaction rolled back with
    /// its notification.
    #[default]
    AfterCommit,
    /// Each enqueue adds a `pg_notify` to the producer's transaction:
    /// relays wake on every commit, however it is made, at the price of
    /// serializing commits on the notification queue (measured: about 40 %
    /// of write throughput at 8 writers).
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
    /// Set once the `NOTIFY` task runs.
    notifier: OnceLock<()>,
    /// The direct connection for `LISTEN`, with
    /// [`listen_options`](super::PgOutboxBuilder::listen_options).
    listen_pool: OnceLock<PgPool>,
    /// Whether relays were told that `LISTEN` cannot work here.
    said_no_listen: AtomicBool,
    /// Wake-up bookkeeping, in microseconds since `epoch` (0: never): when
    /// the last enqueue that carried a `pg_notify` (or the last separate
    /// `NOTIFY`) was sent, and when the last commit through
    /// [`PgOutbox::commit`] returned.
    epoch: Instant,
    carried_at: AtomicU64,
    committed_at: AtomicU64,
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
            notifier: OnceLock::new(),
            listen_pool: OnceLock::new(),
            said_no_listen: AtomicBool::new(false),
            epoch: Instant::now(),
            carried_at: AtomicU64::new(0),
            committed_at: AtomicU64::new(0),
        }
    }

    fn micros(&self) -> u64 {
        // Never 0, which stands for "never".
        self.epoch.elapsed().as_micros() as u64 + 1
    }
}

impl PgOutbox {
    /// The channel an enqueue's statement notifies, if it carries the
    /// wake-up (see [`carries_wake_up`](Self::carries_wake_up)).
    pub(super) fn carried_channel(&self) -> Option<&str> {
        self.carries_wake_up()
            .then_some(self.inner.wake.channel.as_str())
    }

    /// Whether this enqueue carries the wake-up: always with
    /// [`WakeUp::InTransaction`]; with [`WakeUp::AfterCommit`], the first
    /// enqueue after `notify_interval` without one. Its `pg_notify` is sent
    /// when the caller's transaction commits: no transaction of its own,
    /// and, under load, one in every so many transactions pays for it.
    fn carries_wake_up(&self) -> bool {
        let w = &self.inner.wake;
        match w.mode {
            WakeUp::InTransaction => true,
            WakeUp::LocalOnly => false,
            WakeUp::AfterCommit => {
                let now = w.micros();
                let last = w.carried_at.load(Ordering::Acquire);
                let interval = w.notify_interval.as_micros() as u64;
                if interval == 0 {
                    w.carried_at.fetch_max(now, Ordering::AcqRel);
                    return true;
                }
                (last == 0 || now.saturating_sub(last) >= interval)
                    && w.carried_at
                        .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
            }
        }
    }

    /// Wakes relays now, as after a commit.
    pub fn wake(&self) {
        let w = &self.inner.wake;
        w.signal.notify_waiters();
        w.signal.notify_one();
        if w.mode == WakeUp::AfterCommit {
            w.committed_at.fetch_max(w.micros(), Ordering::AcqRel);
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
            // WAL sync per thousand of them); an explicit BEGIN/SET/COMMIT
            // around it cost four commands and about four times the server
            // time.
            let notify = self.inner.sql.notify.clone();
            let channel = self.inner.wake.channel.clone();
            // Behind transaction pooling a prepared statement would not
            // survive on the server connection: one simple query instead
            // (one protocol message, so one server connection). The channel
            // is built from validated identifiers.
            let simple_notify = (!self.named()).then(|| format!("NOTIFY \"{channel}\""));
            // The task holds the outbox weakly and ends soon after the last
            // clone of it is dropped.
            let alive = Arc::downgrade(&self.inner);
            // A commit is covered by any `pg_notify` carried by an enqueue
            // made after it returned (that transaction commits later still,
            // and its notification goes out then). Under load the next
            // enqueue comes within `notify_interval` and carries one; this
            // task sends a NOTIFY of its own only for commits that no such
            // enqueue followed within twice the interval (at least 1 ms):
            // the end of a burst, or commits of transactions that enqueued
            // through another outbox.
            let grace = (interval * 2).max(Duration::from_millis(1));
            handle.spawn(async move {
                let mut conn: Option<PgConnection> = None;
                loop {
                    if alive.strong_count() == 0 || pool.is_closed() {
                        return;
                    }
                    if tokio::time::timeout(Duration::from_secs(1), remote.notified())
                        .await
                        .is_err()
                    {
                        continue;
                    }
                    let Some(inner) = alive.upgrade() else { return };
                    let committed = inner.wake.committed_at.load(Ordering::Acquire);
                    let due = inner.wake.epoch + Duration::from_micros(committed) + grace;
                    drop(inner);
                    tokio::time::sleep_until(due.into()).await;
                    let Some(inner) = alive.upgrade() else { return };
                    if inner.wake.carried_at.load(Ordering::Acquire) > committed {
                        continue;
                    }
                    let started = inner.wake.micros();
                    drop(inner);
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
                        // Counts as carried from its start: enqueues within
                        // the next interval need not carry one.
                        if let Some(inner) = alive.upgrade() {
                            inner.wake.carried_at.fetch_max(started, Ordering::AcqRel);
                        }
                    } else {
                        // Not sent: try again shortly, for the same commits.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        remote.notify_one();
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
        let mut listener = match &self.inner.listen_options {
            Some(options) => {
                let pool = self.inner.wake.listen_pool.get_or_init(|| {
                    PgPoolOptions::new()
                        .max_connections(1)
                        .connect_lazy_with(options.clone())
                });
                PgListener::connect_with(pool).await?
            }
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
            None => PgListener::connect_with(&self.inner.pool).await?,
        };
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
