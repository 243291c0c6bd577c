//! Maintenance between rounds: gauges from the store's statistics, a
//! vacuum of the messages table where nothing else vacuums it, and the
//! purge of retained messages.

use std::time::Duration;

use tokio::time::Instant;

use super::worker::Worker;
use super::Retention;
use crate::error::error_chain;
use crate::store::{Purge, StoreStats};

/// Dead rows in the messages table above which a relay vacuums it itself
/// when the server's autovacuum is off.
pub(super) const SELF_VACUUM_DEAD_ROWS: i64 = 10_000;

/// Most purge statements per stats tick.
const PURGES_PER_TICK: usize = 10;

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

impl Worker {
    /// Refreshes the gauges, vacuums if needed and purges retained messages;
    /// failures are logged and wait for the next tick.
    pub(super) async fn refresh_stats(&mut self) {
        self.next_stats = Instant::now() + self.config.stats_interval;
        match self.store.stats().await {
            Ok(s) => {
                record_gauges(&s);
                self.vacuum_if_unvacuumed(&s).await;
                warn_of_held_back_vacuum(&s);
            }
            Err(e) => {
                tracing::debug!(error = %error_chain(&e), "outbox relay: stats query failed");
            }
        }
        if let Retention::Keep(keep) = self.config.retention {
            self.purge_published(keep).await;
        }
    }

    async fn vacuum_if_unvacuumed(&mut self, s: &StoreStats) {
        match unvacuumed(s, self.config.vacuum_if_autovacuum_off) {
            Some(Unvacuumed::Vacuum) => {
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
            }
            Some(Unvacuumed::Warn) if !self.warned_autovacuum_off => {
                self.warned_autovacuum_off = true;
                tracing::warn!(
                    dead_tuples = s.dead_tuples.unwrap_or(0),
                    "outbox: autovacuum is off on this server and nothing vacuums the \
                     outbox table: it will grow and claims will slow down"
                );
            }
            Some(Unvacuumed::Warn) | None => {}
        }
    }

    /// Deletes retained messages published more than `keep` ago.
    async fn purge_published(&mut self, keep: Duration) {
        let cutoff =
            self.clock.now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        // Bounded work per tick, so a large backlog of expired rows never
        // turns into one long-running delete.
        for _ in 0..PURGES_PER_TICK {
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

fn record_gauges(s: &StoreStats) {
    metrics::gauge!("outbox_pending").set(s.pending as f64);
    metrics::gauge!("outbox_ready").set(s.ready as f64);
    metrics::gauge!("outbox_retry_waiting").set(s.retry_waiting as f64);
    metrics::gauge!("outbox_parked").set(s.parked as f64);
    metrics::gauge!("outbox_dead_letters").set(s.dead_letters as f64);
    metrics::gauge!("outbox_oldest_pending_age_seconds")
        .set(s.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64()));
    if let Some(dead) = s.dead_tuples {
        metrics::gauge!("outbox_dead_tuples").set(dead as f64);
    }
    metrics::gauge!("outbox_oldest_transaction_age_seconds")
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
}
