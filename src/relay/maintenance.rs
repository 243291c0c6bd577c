//! Maintenance beside the rounds: at each stats interval, gauges from the
//! store's statistics, a vacuum of the messages table where nothing else
//! vacuums it, and the purge of retained messages; about once a second, the
//! parking (messages held behind blocked keys out of the claims' path,
//! sleeping retries woken when due). Each runs in a task of its own, one
//! pass of each at a time, so a slow statistics query, vacuum, purge or
//! parking never delays lease renewal or publishing, nor one the other;
//! the stats pass reports back for the gauges and warnings.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::clock::{spread, Clock};
use super::labels::Labels;
use super::worker::Worker;
use super::Retention;
use crate::error::error_chain;
use crate::store::sealed::StoreOps;
use crate::store::{sleep_horizon, Park, Purge, StoreStats, TopicStats};

/// Dead rows in the messages table above which a relay vacuums it itself
/// when the server's autovacuum is off.
pub(super) const SELF_VACUUM_DEAD_ROWS: i64 = 10_000;

/// Most purge statements per stats tick.
const PURGES_PER_TICK: usize = 10;

/// The statistics queries take at most one part in this many of the
/// time: where two passes in a row took longer than the stats interval
/// over this, the next waits this many times the shorter of the two from
/// the last one's start. They count the whole messages table (about
/// 0.25 s at a million messages here), so on a backlog of tens of
/// millions a fixed 10 s interval would keep a database core counting
/// for a quarter of the time or more, just when the backlog needs it. A
/// single slow pass (a lock waited for, a stall) stretches nothing.
pub(super) const STATS_SHARE: u32 = 10;

/// How often a relay parks the messages held behind blocked keys.
pub(super) const PARK_INTERVAL: Duration = Duration::from_secs(1);

/// Most messages one parking statement parks.
const PARK_BATCH: i64 = 10_000;

/// Most parking statements per pass: a million messages behind a newly
/// blocked key leave the claims' path in a few passes, each statement a
/// short transaction of its own.
const PARKS_PER_PASS: usize = 20;

/// Acknowledgements recording key numbers after which a relay folds them
/// into their table (PostgreSQL records them apart, one row per
/// acknowledgement, which a read of a key's number goes through until
/// they are folded), while it has read no numbers from the store since
/// its last fold (it knows its keys' numbers). A fold costs about 4 µs
/// per distinct key and writes each key once however many records hold
/// it: over 10,000 busy keys, folding every 64 acknowledgements of 1,000
/// rather than every 16 writes 0.16 rather than 0.5 rows per message.
pub(super) const FOLD_EVERY: u32 = 64;

/// The same, while the relay reads numbers of keys it does not know: each
/// read goes through every record not folded yet (unnesting 32 records of
/// 1,000 numbers took 7.5 ms), so a relay that meets new keys in every
/// batch keeps the records short. Other relays' reads (a bucket's new
/// owner) go through the records this one leaves, at most about
/// [`FOLD_EVERY`] between its folds and its parking passes' folds.
pub(super) const FOLD_EVERY_READING: u32 = 16;

/// Acknowledgements recording key numbers after which to fold them:
/// [`FOLD_EVERY_READING`] if the relay read numbers since the last fold,
/// else [`FOLD_EVERY`].
pub(super) fn fold_every(read_numbers: bool) -> u32 {
    if read_numbers {
        FOLD_EVERY_READING
    } else {
        FOLD_EVERY
    }
}

/// Most recorded acknowledgements one fold statement takes.
const FOLD_ROWS: i64 = 64;

/// Most key numbers one fold statement takes (each recorded
/// acknowledgement holds up to a batch of them).
const FOLD_NUMBERS: i64 = 65_536;

/// Recorded acknowledgements per fold statement under `batch_size`:
/// [`FOLD_ROWS`], fewer for large batches, so that a statement stays short
/// (about 40 ms for 64,000 numbers over 10,000 keys) whatever the batch.
fn fold_rows(batch_size: usize) -> i64 {
    (FOLD_NUMBERS / batch_size.max(1) as i64).clamp(1, FOLD_ROWS)
}

/// How soon a parking pass due while a fold of key numbers holds its slot
/// looks again.
const FOLD_LOOK_AGAIN: Duration = Duration::from_millis(20);

/// Fold statements per pass, unless the batch size makes each take so
/// few records that [`folds_per_pass`] needs more.
const FOLDS_PER_PASS: usize = 8;

/// Fold statements a pass may run when each takes `rows` records: enough
/// to fold the [`FOLD_EVERY`] records that start a fold between parking
/// passes, and more, whatever the batch size.
fn folds_per_pass(rows: i64) -> usize {
    let needed = (i64::from(FOLD_EVERY) + rows.max(1) - 1) / rows.max(1) + 1;
    FOLDS_PER_PASS.max(usize::try_from(needed).unwrap_or(usize::MAX))
}

/// What the relay does about a messages table the server does not vacuum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unvacuumed {
    /// Vacuum it now.
    Vacuum,
    /// Say once that it will grow: the relay was told not to vacuum.
    Warn,
}

/// Whether `stats` show a messages table that grows because autovacuum is
/// off, and what to do about it.
pub(super) fn unvacuumed(stats: &StoreStats, vacuum_if_autovacuum_off: bool) -> Option<Unvacuumed> {
    let dead = stats.dead_tuples.unwrap_or(0);
    if stats.autovacuum != Some(false) || dead <= SELF_VACUUM_DEAD_ROWS {
        return None;
    }
    Some(if vacuum_if_autovacuum_off {
        Unvacuumed::Vacuum
    } else {
        Unvacuumed::Warn
    })
}

/// A maintenance pass in its own task; aborted when dropped (a vacuum or
/// purge cut short is done again by a later pass).
pub(super) struct Upkeep(JoinHandle<Report>);

impl Drop for Upkeep {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a pass found, for the worker's gauges and warnings.
#[derive(Debug)]
pub(super) struct Report {
    /// `None` when the statistics were not due or their query failed.
    stats: Option<StoreStats>,
    /// Pending messages per topic; `None` when their query failed.
    topics: Option<Vec<TopicStats>>,
    unvacuumed: Option<Unvacuumed>,
    /// When the pass started.
    started: Instant,
    /// How long reading the figures took; `None` if it failed.
    counting: Option<Duration>,
}

/// A parking pass (or a fold of key numbers alone) in its own task;
/// aborted when dropped.
pub(super) struct Parking {
    task: JoinHandle<()>,
    /// A fold of key numbers between parking passes.
    folding_only: bool,
}

impl Drop for Parking {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wakes the sleeping retries about due, unparks the keys whose blocks
/// lifted and parks what blocked keys hold back, a batch at a time. A
/// failure waits for the next pass, a second later; it is logged at `warn`,
/// since while it lasts retries stay asleep and lifted keys wait.
///
/// With `fold`, it then folds the key numbers acknowledgements recorded,
/// that many recorded acknowledgements a statement.
async fn park(store: Arc<dyn StoreOps>, clock: Clock, labels: Labels, fold: Option<i64>) {
    for call in 0..PARKS_PER_PASS {
        let park = Park {
            wake_by: (call == 0).then(|| sleep_horizon(clock.now())),
            limit: PARK_BATCH,
        };
        match store.park(park).await {
            Ok(n) => {
                metrics::counter!("outbox_parked_total", labels.all()).increment(n);
                if (n as i64) < PARK_BATCH {
                    break;
                }
            }
            Err(e) => {
                failed(&labels, "parking", &e);
                break;
            }
        }
    }
    if let Some(rows) = fold {
        fold_key_sequences(&*store, &labels, rows).await;
    }
}

/// A maintenance step of its own task that failed: logged at `warn` and
/// counted in `outbox_relay_errors_total` under `operation`.
fn failed(labels: &Labels, operation: &'static str, e: &crate::Error) {
    tracing::warn!(error = %error_chain(e), "outbox relay: {operation} failed");
    metrics::counter!(
        "outbox_relay_errors_total",
        labels.with("operation", operation)
    )
    .increment(1);
}

/// Folds the key numbers acknowledgements recorded apart into their
/// table, a bounded number of statements at a time. A failure waits for
/// the next pass: reads go through what is not folded yet meanwhile.
async fn fold_key_sequences(store: &dyn StoreOps, labels: &Labels, rows: i64) {
    for _ in 0..folds_per_pass(rows) {
        match store.fold_key_sequences(rows).await {
            Ok(n) if n as i64 >= rows => continue,
            Ok(_) => break,
            Err(e) => {
                failed(labels, "folding key numbers", &e);
                break;
            }
        }
    }
}

/// What a pass needs, owned, so it can run beside the rounds.
struct Pass {
    store: Arc<dyn StoreOps>,
    clock: Clock,
    retention: Retention,
    purge_batch: i64,
    vacuum_if_autovacuum_off: bool,
    labels: Labels,
}

impl Pass {
    /// Reads the statistics, vacuums if needed and purges retained
    /// messages; failures are logged and wait for the next pass.
    async fn run(self) -> Report {
        let started = Instant::now();
        let (stats, topics, counting) = match self.store.figures().await {
            Ok((s, t)) => (Some(s), Some(t), Some(started.elapsed())),
            Err(e) => {
                // The gauges keep their last readings meanwhile: say so
                // where an alert on the errors can see it.
                failed(&self.labels, "reading statistics", &e);
                (None, None, None)
            }
        };
        let unvacuumed = stats
            .as_ref()
            .and_then(|s| unvacuumed(s, self.vacuum_if_autovacuum_off));
        if unvacuumed == Some(Unvacuumed::Vacuum) {
            match self.store.vacuum().await {
                Ok(()) => {
                    metrics::counter!("outbox_self_vacuums_total", self.labels.all()).increment(1)
                }
                Err(e) => failed(&self.labels, "vacuuming the outbox table", &e),
            }
        }
        if let Retention::Keep(keep) = self.retention {
            self.purge_published(keep).await;
        }
        Report {
            stats,
            topics,
            unvacuumed,
            started,
            counting,
        }
    }

    /// Deletes retained messages published more than `keep` ago.
    async fn purge_published(&self, keep: Duration) {
        let cutoff =
            self.clock.now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        // Bounded work per tick, so a large backlog of expired rows never
        // turns into one long-running delete.
        for _ in 0..PURGES_PER_TICK {
            let purge = Purge {
                before: cutoff,
                limit: self.purge_batch,
            };
            match self.store.purge_published(purge).await {
                Ok(n) if n as i64 >= self.purge_batch => continue,
                Ok(_) => break,
                Err(e) => {
                    failed(&self.labels, "purging published messages", &e);
                    break;
                }
            }
        }
    }
}

impl Worker {
    /// Starts the passes that are due: a parking pass unless one still
    /// runs, a stats pass unless one still runs (a pass slower than its
    /// interval delays the next one, never a round).
    pub(super) fn start_maintenance(&mut self) {
        let now = Instant::now();
        let idle = self.parking.as_ref().is_none_or(|p| p.task.is_finished());
        let folding = self.parking.as_ref().is_some_and(|p| p.folding_only) && !idle;
        if now >= self.next_park && folding {
            // A fold of key numbers holds the slot: the parking pass does
            // not skip its turn but starts once the fold ends (looked at
            // again shortly, so the relay's waits do not spin meanwhile).
            self.next_park = now + FOLD_LOOK_AGAIN;
        } else if now >= self.next_park {
            // Due again a period later, whether or not a pass starts now:
            // a pass still running (a large parking, a slow connection)
            // skips this turn.
            self.next_park = now + spread(PARK_INTERVAL);
            // A standby relay leaves it to those that hold buckets.
            if idle && !self.leases.is_empty() {
                let fold = self.config.key_sequences.then(|| {
                    self.unfolded_acks = 0;
                    self.read_numbers = false;
                    fold_rows(self.config.batch_size)
                });
                let task = park(
                    self.store.clone(),
                    self.clock,
                    self.config.labels.clone(),
                    fold,
                );
                self.parking = Some(Parking {
                    task: tokio::spawn(task),
                    folding_only: false,
                });
            }
        } else if self.unfolded_acks >= fold_every(self.read_numbers) && idle {
            // Between parking passes, the key numbers recorded by the last
            // few dozen acknowledgements are folded in the parking pass's
            // place (one connection for both), so that a read of a key's
            // number goes through a few dozen of them at most.
            self.unfolded_acks = 0;
            self.read_numbers = false;
            let (store, labels) = (self.store.clone(), self.config.labels.clone());
            let rows = fold_rows(self.config.batch_size);
            let task = async move { fold_key_sequences(&*store, &labels, rows).await };
            self.parking = Some(Parking {
                task: tokio::spawn(task),
                folding_only: true,
            });
        }
        if now < self.next_stats || self.upkeep.is_some() {
            return;
        }
        self.next_stats = now + spread(self.config.stats_interval);
        // The figures, the purge and the vacuum are the outbox's, not this
        // relay's: one relay of a fleet does them, the holder of bucket 0,
        // where each used to count the whole table (four relays on a
        // backlog of a million spent their first seconds counting it four
        // times over).
        if !self.leases.iter().any(|l| l.bucket == 0) {
            if std::mem::take(&mut self.keeps_books) {
                // Read 0 here, so the sum or the largest of the processes'
                // readings is the holder's.
                self.zero_gauges();
            }
            return;
        }
        self.keeps_books = true;
        let pass = Pass {
            store: self.store.clone(),
            clock: self.clock,
            retention: self.config.retention,
            purge_batch: self.config.purge_batch,
            vacuum_if_autovacuum_off: self.config.vacuum_if_autovacuum_off,
            labels: self.config.labels.clone(),
        };
        self.upkeep = Some(Upkeep(tokio::spawn(pass.run())));
    }

    /// Takes in the report of a finished pass, if there is one.
    pub(super) async fn collect_maintenance(&mut self) {
        let Some(upkeep) = self.upkeep.as_mut() else {
            return;
        };
        if !upkeep.0.is_finished() {
            return;
        }
        // Finished: this does not wait.
        let joined = (&mut upkeep.0).await;
        self.upkeep = None;
        match joined {
            Ok(report) => {
                // Counts slower than a tenth of the interval, twice in a
                // row (a backlog of tens of millions), stretch it, so that
                // counting takes at most that share of a database core.
                // A failed read (a timeout, a lost connection) says
                // nothing of how long counting takes: it stretches nothing
                // and is not compared with the next.
                let slow = match (report.counting, self.last_counting) {
                    (Some(took), Some(before)) => took.min(before),
                    _ => Duration::ZERO,
                };
                self.last_counting = report.counting;
                let floor = report.started + slow * STATS_SHARE;
                if floor > self.next_stats {
                    tracing::debug!(
                        counting_ms = slow.as_millis() as u64,
                        "outbox relay: the statistics queries are slow; the next pass is \
                         pushed out accordingly"
                    );
                    self.next_stats = floor;
                }
                self.report_maintenance(&report)
            }
            Err(e) => tracing::warn!(error = %e, "outbox relay: maintenance pass failed"),
        }
    }

    fn report_maintenance(&mut self, r: &Report) {
        if let Some(topics) = &r.topics {
            self.record_topic_gauges(topics);
        }
        let Some(s) = &r.stats else {
            return;
        };
        record_gauges(s, &self.config.labels);
        match r.unvacuumed {
            Some(Unvacuumed::Vacuum) if !self.warned_autovacuum_off => {
                self.warned_autovacuum_off = true;
                tracing::warn!(
                    "outbox: autovacuum is off on this server; the relay vacuums \
                     the outbox table itself"
                );
            }
            Some(Unvacuumed::Warn) if !self.warned_autovacuum_off => {
                self.warned_autovacuum_off = true;
                tracing::warn!(
                    dead_tuples = s.dead_tuples.unwrap_or(0),
                    "outbox: autovacuum is off on this server and nothing vacuums the \
                     outbox table: it will grow and claims will slow down"
                );
            }
            Some(Unvacuumed::Vacuum | Unvacuumed::Warn) | None => {}
        }
        warn_of_held_back_vacuum(s);
    }
}

impl Worker {
    /// Per-topic gauges; a topic with nothing pending any more reads 0.
    fn record_topic_gauges(&mut self, topics: &[TopicStats]) {
        let now = self.clock.now();
        let mut seen = HashSet::with_capacity(topics.len());
        for t in topics {
            let topic = t.topic.clone();
            metrics::gauge!(
                "outbox_topic_pending",
                self.config.labels.with("topic", topic.clone())
            )
            .set(t.pending as f64);
            let age = (now - t.oldest_created_at).to_std().unwrap_or_default();
            metrics::gauge!(
                "outbox_topic_oldest_pending_age_seconds",
                self.config.labels.with("topic", topic.clone())
            )
            .set(age.as_secs_f64());
            seen.insert(topic);
        }
        for gone in self.gauged_topics.difference(&seen) {
            metrics::gauge!(
                "outbox_topic_pending",
                self.config.labels.with("topic", gone.clone())
            )
            .set(0.0);
            metrics::gauge!(
                "outbox_topic_oldest_pending_age_seconds",
                self.config.labels.with("topic", gone.clone())
            )
            .set(0.0);
        }
        self.gauged_topics = seen;
    }
}

impl Worker {
    /// Zeroes the gauges of a named relay that stops, such as a member
    /// removed from its group: alerts on an outbox no longer relayed here
    /// must not fire on its last readings. A lone, unnamed relay leaves
    /// them, since another relay of the process may share them.
    pub(super) fn zero_named_gauges(&mut self) {
        if self.config.labels.name().is_some() {
            self.zero_gauges();
        }
    }

    /// Sets the outbox's gauges to 0, as an empty outbox reads.
    fn zero_gauges(&mut self) {
        let zero = StoreStats {
            dead_tuples: Some(0),
            ..StoreStats::default()
        };
        record_gauges(&zero, &self.config.labels);
        // Every topic gauged so far reads 0, as one that empties does.
        self.record_topic_gauges(&[]);
    }
}

fn record_gauges(s: &StoreStats, labels: &Labels) {
    metrics::gauge!("outbox_pending", labels.all()).set(s.pending as f64);
    metrics::gauge!("outbox_ready", labels.all()).set(s.ready as f64);
    metrics::gauge!("outbox_retry_waiting", labels.all()).set(s.retry_waiting as f64);
    metrics::gauge!("outbox_parked", labels.all()).set(s.parked as f64);
    metrics::gauge!("outbox_dead_letters", labels.all()).set(s.dead_letters as f64);
    metrics::gauge!("outbox_oldest_pending_age_seconds", labels.all())
        .set(s.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64()));
    if let Some(dead) = s.dead_tuples {
        metrics::gauge!("outbox_dead_tuples", labels.all()).set(dead as f64);
    }
    metrics::gauge!("outbox_oldest_transaction_age_seconds", labels.all())
        .set(s.oldest_xmin_age.unwrap_or_default().as_secs_f64());
}

/// A long transaction keeps even a running vacuum from removing dead rows:
/// name it, since the relay cannot fix it.
fn warn_of_held_back_vacuum(s: &StoreStats) {
    let xmin_age = s.oldest_xmin_age.unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(dead_tuples: Option<i64>, autovacuum: Option<bool>) -> StoreStats {
        StoreStats {
            dead_tuples,
            autovacuum,
            ..StoreStats::default()
        }
    }

    #[test]
    fn only_a_table_nothing_vacuums_gets_vacuumed() {
        let many = Some(SELF_VACUUM_DEAD_ROWS + 1);
        assert_eq!(
            unvacuumed(&stats(many, Some(false)), true),
            Some(Unvacuumed::Vacuum)
        );
        assert_eq!(
            unvacuumed(&stats(many, Some(false)), false),
            Some(Unvacuumed::Warn)
        );
        assert_eq!(unvacuumed(&stats(many, Some(true)), true), None);
        // SQLite: no autovacuum to speak of.
        assert_eq!(unvacuumed(&stats(many, None), true), None);
        let few = Some(SELF_VACUUM_DEAD_ROWS);
        assert_eq!(unvacuumed(&stats(few, Some(false)), true), None);
        assert_eq!(unvacuumed(&stats(None, Some(false)), true), None);
    }

    #[test]
    fn a_fold_takes_fewer_recorded_acknowledgements_the_larger_the_batch() {
        assert_eq!(fold_rows(1), FOLD_ROWS);
        assert_eq!(fold_rows(500), FOLD_ROWS);
        assert_eq!(fold_rows(1000), 64);
        assert_eq!(fold_rows(10_000), 6);
        assert_eq!(fold_rows(100_000), 1);
        // A pass folds the records that started it, whatever the batch.
        for b in [1, 1000, 8192, 10_000, 65_536, 100_000] {
            let rows = fold_rows(b);
            assert!(
                folds_per_pass(rows) as i64 * rows > i64::from(FOLD_EVERY),
                "batch {b}: {} statements of {rows}",
                folds_per_pass(rows)
            );
        }
        assert_eq!(folds_per_pass(64), FOLDS_PER_PASS);
        for b in [1, 500, 1000, 4096, 10_000, 100_000] {
            assert!(fold_rows(b) * b as i64 <= FOLD_NUMBERS.max(b as i64));
        }
    }
}
