//! One round: claim a batch (or take the one claimed early), publish it,
//! acknowledge it (or leave its acknowledgement to land while the next
//! round publishes), and report what happened.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tracing::Instrument;

use super::leases::claim_scope;
use super::numbering::number_keys;
use super::worker::Worker;
use super::Retention;
use crate::error::Result;
use crate::store::{Ack, AckBatch, AckReport, Claim, Claimed, ClaimedBatch, Disposition, Lease};

/// A claim running while the batch before it is published; aborted when
/// dropped.
pub(super) struct Prefetch(tokio::task::JoinHandle<Result<ClaimedBatch>>);

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Drops from a batch claimed early every message of a key in `unsettled`:
/// the key's earlier message is still pending (or now blocked), so its
/// later ones wait for the next claim.
pub(super) fn without_unsettled(got: Vec<Claimed>, unsettled: &HashSet<String>) -> Vec<Claimed> {
    got.into_iter()
        .filter(|c| {
            c.message
                .partition_key
                .as_ref()
                .is_none_or(|k| !unsettled.contains(k))
        })
        .collect()
}

/// The leases of the buckets `acks` acknowledge: all a store needs to
/// fence them.
pub(super) fn acked_leases(leases: &[Lease], acks: &[Ack]) -> Vec<Lease> {
    let buckets: HashSet<i32> = acks.iter().map(|a| a.bucket).collect();
    leases
        .iter()
        .filter(|l| buckets.contains(&l.bucket))
        .cloned()
        .collect()
}

/// The keys of a batch (position, key) with a message that `acks` does not
/// report published: failed, retried, or never sent because a lease ran out
/// or the key stopped.
pub(super) fn unsettled_keys(batch: &[(i64, Option<String>)], acks: &[Ack]) -> HashSet<String> {
    let done: HashSet<i64> = acks
        .iter()
        .filter(|a| matches!(a.disposition, Disposition::Published))
        .map(|a| a.seq)
        .collect();
    batch
        .iter()
        .filter(|(seq, _)| !done.contains(seq))
        .filter_map(|(_, k)| k.clone())
        .collect()
}

/// What an acknowledged batch amounted to, fenced acknowledgements left
/// out.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) published: u64,
    pub(super) retried: u64,
    pub(super) dead: u64,
    /// The earliest retry scheduled.
    pub(super) next_retry: Option<DateTime<Utc>>,
}

/// Counts `acks`, skipping those of `fenced_buckets` (they did not apply).
pub(super) fn tally(acks: &[Ack], fenced_buckets: &[i32]) -> Tally {
    let mut t = Tally::default();
    for a in acks {
        if fenced_buckets.contains(&a.bucket) {
            continue;
        }
        match &a.disposition {
            Disposition::Published => t.published += 1,
            Disposition::Retry { at, .. } => {
                t.retried += 1;
                t.next_retry = Some(t.next_retry.map_or(*at, |r| r.min(*at)));
            }
            Disposition::Dead { .. } => t.dead += 1,
        }
    }
    t
}

/// An acknowledgement written while the next batch is published: its
/// task, and the positions of its batch, which a claim started before it
/// lands leaves out.
pub(super) struct PendingAck {
    task: tokio::task::JoinHandle<(Vec<Ack>, Vec<Lease>, Result<AckReport>)>,
    positions: Vec<i64>,
    span: tracing::Span,
    /// Turns true when the acknowledgement has landed (or its sender is
    /// gone with the task).
    landed: tokio::sync::watch::Receiver<bool>,
}

impl PendingAck {
    /// Resolves once the acknowledgement has landed: a lease renewal
    /// waits for it, so the relay's renewal never contends with its own
    /// acknowledgement's share locks on the lease rows.
    pub(super) fn landed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut landed = self.landed.clone();
        async move {
            // An error means the task is gone: nothing left to wait for.
            let _ = landed.wait_for(|l| *l).await;
        }
    }
}

impl Drop for PendingAck {
    /// Dropped unsettled only when the relay stops without waiting for it:
    /// it lands or not, as a round cut short does, and the buckets' next
    /// owner publishes what it did not settle.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Worker {
    /// Claims one batch, publishes it and acknowledges it. Returns true if
    /// the batch was full or left messages behind a failure of their key in
    /// the same call (more may be waiting).
    ///
    /// When more may be waiting, the acknowledgement is written while the
    /// next round publishes (it lands before that round's own, in order):
    /// the database and the publisher work at the same time. The next
    /// round's batch was claimed before it landed, so it is claimed
    /// without the positions of both batches in flight and loses every
    /// message of a key either batch left unsettled.
    pub(super) async fn round(&mut self) -> Result<bool> {
        let (claimed, full) = match self.prefetch.take() {
            Some(mut p) => {
                let got = (&mut p.0).await.map_err(crate::Error::RelayTask)??;
                let full = got.more;
                // Later messages of a key whose earlier one is still pending
                // (or now blocked) wait for the next claim.
                let unsettled = std::mem::take(&mut self.unsettled);
                (without_unsettled(got.messages, &unsettled), full)
            }
            None => {
                // A claim of its own reads the store as every
                // acknowledgement left it, under leases known to hold: a
                // refused acknowledgement sends the relay to renew first.
                if self.settle_ack().await? {
                    return Ok(true);
                }
                let got = self.claim(Vec::new()).await?;
                let full = got.more;
                (got.messages, full)
            }
        };
        self.unsettled.clear();
        self.last_claimed = claimed.len();
        self.held_back = false;
        if claimed.is_empty() {
            if !full {
                self.settle_ack().await?;
            }
            return Ok(full);
        }
        // Whether the early claim below runs while the last batch's
        // acknowledgement is in flight.
        let mut claimed_over_ack = false;
        if full && self.config.prefetch && !self.shutdown.requested() {
            let mut in_flight: Vec<i64> = claimed.iter().map(|c| c.message.seq).collect();
            if let Some(p) = &self.pending_ack {
                in_flight.extend_from_slice(&p.positions);
                claimed_over_ack = true;
            }
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
            // Numbers continue from those the last acknowledgement stored,
            // and only the bucket's owner numbers its keys: after a refused
            // acknowledgement, this batch waits until the leases are renewed.
            if self.settle_ack().await? {
                return Ok(true);
            }
            let store = self.store.clone();
            self.read_numbers |= number_keys(
                &*store,
                &mut claimed,
                &mut self.known_numbers,
                &self.leases,
                self.bucket_count,
                self.config.lease_ttl,
            )
            .await?;
        }
        let started = std::time::Instant::now();
        let acks = self.publish_batch(claimed).instrument(span.clone()).await;
        metrics::histogram!("outbox_publish_duration_seconds", self.config.labels.all())
            .record(started.elapsed().as_secs_f64());
        // The last batch's acknowledgement lands before this one's is
        // written. If it failed, this one is not written either: both
        // batches stay pending and go out again in order (a key's message
        // acknowledged here while its earlier one stays pending would be
        // delivered again after it).
        self.settle_ack().await?;
        let unsettled = unsettled_keys(&batch_keys, &acks);
        let settled_before = std::mem::replace(&mut self.last_unsettled, unsettled.clone());
        if self.prefetch.is_some() {
            self.unsettled = unsettled;
            if claimed_over_ack {
                self.unsettled.extend(settled_before);
            }
        }
        let more = full || self.held_back;
        // Nothing to write when no call returned (a lease ran out, or the
        // relay is stopping): one round trip fewer, which a shutdown feels.
        if acks.is_empty() {
            self.took_ack(&acks, &[], AckReport::default(), &span);
        } else {
            let task = self.ack_task(acks).instrument(span.clone());
            // In a group, a member acknowledges in its own turn.
            let overlap = self.config.prefetch && self.config.turns.is_none();
            if more && overlap && !self.shutdown.requested() {
                let (done, landed) = tokio::sync::watch::channel(false);
                let task = async move {
                    let acked = task.await;
                    done.send_replace(true);
                    acked
                };
                self.pending_ack = Some(PendingAck {
                    task: tokio::spawn(task),
                    positions: batch_keys.into_iter().map(|(seq, _)| seq).collect(),
                    span,
                    landed,
                });
            } else {
                let (acks, leases, report) = task.await;
                let report = self.forget_numbers_on_error(report)?;
                self.took_ack(&acks, &leases, report, &span);
            }
        }
        // Messages held back behind a failure of their key in the call go
        // out with the next claim (under the unordered policy, ahead of
        // the failed one's retry), not at the next wake-up.
        Ok(more)
    }

    /// Waits for the acknowledgement in flight, if any, and takes in what
    /// it reported. True if the store refused some of it (a lease changed
    /// hands): the leases must be renewed before the next claim.
    pub(super) async fn settle_ack(&mut self) -> Result<bool> {
        let Some(mut p) = self.pending_ack.take() else {
            return Ok(false);
        };
        let (acks, leases, report) = match (&mut p.task).await {
            Ok(done) => done,
            Err(e) => {
                self.forget_numbers_after_failure();
                return Err(crate::Error::RelayTask(e));
            }
        };
        let report = self.forget_numbers_on_error(report)?;
        let fenced = report.fenced > 0;
        self.took_ack(&acks, &leases, report, &p.span);
        // The round that published it returned before it landed.
        self.record_success();
        Ok(fenced)
    }

    /// The acknowledgement of `acks` under the current leases; it owns
    /// what it needs, so it can run as a task of its own, and gives the
    /// acknowledgements back with the store's report.
    fn ack_task(
        &self,
        acks: Vec<Ack>,
    ) -> impl std::future::Future<Output = (Vec<Ack>, Vec<Lease>, Result<AckReport>)> + Send + 'static
    {
        let store = self.store.clone();
        // Only the leases of the buckets acknowledged: the store fences
        // each acknowledgement by its bucket's lease alone, and locks every
        // lease it is given (PostgreSQL: a share lock, one WAL record, per
        // row), so a one-message batch locks one lease rather than all the
        // relay holds.
        let leases = acked_leases(&self.leases, &acks);
        let labels = self.config.labels.all();
        let (relay, now) = (self.config.relay_id, self.clock.now());
        let retain = matches!(self.config.retention, Retention::Keep(_));
        async move {
            let batch = AckBatch {
                relay,
                leases: &leases,
                acks: &acks,
                retain,
                now,
            };
            let started = std::time::Instant::now();
            let report = store.ack(batch).await;
            metrics::histogram!("outbox_ack_duration_seconds", labels)
                .record(started.elapsed().as_secs_f64());
            (acks, leases, report)
        }
    }

    /// Passes on an acknowledgement's result; after an error, whatever the
    /// store holds of the keys' numbers is unknown, so the numbers known
    /// are forgotten.
    fn forget_numbers_on_error(&mut self, report: Result<AckReport>) -> Result<AckReport> {
        if report.is_err() {
            self.forget_numbers_after_failure();
        }
        report
    }

    fn forget_numbers_after_failure(&mut self) {
        self.known_numbers
            .forget_after_failure(std::time::SystemTime::now(), self.config.lease_ttl);
    }

    /// Takes in a written acknowledgement: counts, the next retry, and
    /// fencing (the early claim was made under leases that changed hands).
    /// `leases` are those the acknowledgement was fenced by.
    fn took_ack(
        &mut self,
        acks: &[Ack],
        leases: &[Lease],
        report: AckReport,
        span: &tracing::Span,
    ) {
        if report.fenced > 0 {
            self.prefetch = None;
        }
        if self.config.key_sequences {
            let now = std::time::SystemTime::now();
            self.known_numbers.acknowledged(acks, &report, leases, now);
            if report.applied > 0 && acks.iter().any(|a| a.key_sequence.is_some()) {
                self.unfolded_acks += 1;
            }
        }
        let t = tally(acks, &report.fenced_buckets);
        if let Some(at) = t.next_retry {
            let when = self.clock.instant_of(at);
            self.next_retry = Some(self.next_retry.map_or(when, |r| r.min(when)));
        }
        span.record("published", t.published);
        span.record("failed", t.retried + t.dead);
        span.record("fenced", report.fenced);
        if report.fenced > 0 {
            metrics::counter!("outbox_fenced_total", self.config.labels.all())
                .increment(report.fenced as u64);
            tracing::warn!(
                relay = %self.config.relay_id,
                fenced = report.fenced,
                "outbox relay: acknowledgements refused, the lease changed hands; \
                 the new owner publishes these messages again"
            );
            // Find out which leases are gone before the next round.
            self.next_lease_tick = Instant::now();
        }
        metrics::counter!("outbox_published_total", self.config.labels.all())
            .increment(t.published);
        metrics::counter!("outbox_retried_total", self.config.labels.all()).increment(t.retried);
        metrics::counter!("outbox_dead_lettered_total", self.config.labels.all()).increment(t.dead);
        self.health.published += t.published;
        metrics::counter!("outbox_batches_total", self.config.labels.all()).increment(1);
    }

    /// A claim of this relay's buckets, leaving out the positions in
    /// `exclude` (a batch still in flight); it owns what it needs, so it can
    /// run as a task of its own.
    fn claim(
        &self,
        exclude: Vec<i64>,
    ) -> impl std::future::Future<Output = Result<ClaimedBatch>> + Send + 'static {
        let buckets = claim_scope(&self.leases, self.bucket_count);
        let store = self.store.clone();
        let labels = self.config.labels.all();
        let (count, now, limit, max_bytes) = (
            self.bucket_count,
            self.clock.now(),
            self.config.batch_size as i64,
            self.config.max_batch_bytes as i64,
        );
        async move {
            let claim = Claim {
                buckets: buckets.as_deref(),
                bucket_count: count,
                now,
                limit,
                exclude: &exclude,
                max_bytes,
            };
            let started = std::time::Instant::now();
            let claimed = store.claim(claim).await;
            metrics::histogram!("outbox_claim_duration_seconds", labels)
                .record(started.elapsed().as_secs_f64());
            claimed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::claimed;

    fn ack(seq: i64, bucket: i32, disposition: Disposition) -> Ack {
        super::super::waves::ack_of(&claimed(seq, None, bucket), disposition)
    }

    fn retry(at: DateTime<Utc>) -> Disposition {
        Disposition::Retry {
            at,
            error: "down".into(),
            block_key: true,
        }
    }

    #[test]
    fn an_early_claim_loses_the_later_messages_of_unsettled_keys() {
        let got = vec![
            claimed(3, Some("a"), 0),
            claimed(4, Some("b"), 0),
            claimed(5, None, 0),
            claimed(6, Some("a"), 0),
        ];
        let unsettled = HashSet::from(["a".to_owned()]);
        let kept: Vec<i64> = without_unsettled(got, &unsettled)
            .iter()
            .map(|c| c.message.seq)
            .collect();
        assert_eq!(kept, [4, 5]);
    }

    #[test]
    fn keys_with_a_message_not_published_stay_unsettled() {
        let batch = vec![
            (1, Some("a".to_owned())),
            (2, Some("b".to_owned())),
            (3, None),
            (4, Some("c".to_owned())),
            (5, Some("d".to_owned())),
        ];
        let acks = [
            ack(1, 0, Disposition::Published),
            ack(2, 0, retry(Utc::now())),
            ack(3, 0, Disposition::Published),
            // 4 never went out (its key stopped or the lease ran out).
            ack(
                5,
                0,
                Disposition::Dead {
                    error: "no".into(),
                    block_key: false,
                },
            ),
        ];
        let mut keys: Vec<String> = unsettled_keys(&batch, &acks).into_iter().collect();
        keys.sort();
        assert_eq!(keys, ["b", "c", "d"]);
    }

    #[test]
    fn a_tally_leaves_out_fenced_buckets_and_finds_the_first_retry() {
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(5);
        let acks = [
            ack(1, 0, Disposition::Published),
            ack(2, 1, Disposition::Published),
            ack(3, 0, retry(later)),
            ack(4, 0, retry(now + chrono::Duration::seconds(9))),
            ack(5, 1, retry(now)),
            ack(
                6,
                0,
                Disposition::Dead {
                    error: "no".into(),
                    block_key: true,
                },
            ),
        ];
        assert_eq!(
            tally(&acks, &[1]),
            Tally {
                published: 1,
                retried: 2,
                dead: 1,
                next_retry: Some(later),
            }
        );
    }

    #[test]
    fn an_acknowledgement_carries_only_the_leases_of_its_buckets() {
        let leases: Vec<Lease> = (0..64)
            .map(|b| Lease {
                bucket: b,
                epoch: 7,
            })
            .collect();
        let acks = [
            ack(1, 3, Disposition::Published),
            ack(2, 9, retry(Utc::now())),
            ack(3, 3, Disposition::Published),
            // A bucket the relay no longer holds stays out: it is fenced.
            ack(4, 70, Disposition::Published),
        ];
        let mut got: Vec<i32> = acked_leases(&leases, &acks)
            .iter()
            .map(|l| l.bucket)
            .collect();
        got.sort();
        assert_eq!(got, [3, 9]);
    }
}
