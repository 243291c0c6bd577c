//! Waves: a batch published at most one message per partition key per
//! publisher call (or, to a publisher that keeps a key's order within a
//! call, each key's messages as one run), and each publish result turned
//! into an acknowledgement.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::publish::Call;
use super::retry::{RetryPolicy, MAX_RETRY_DELAY};
use super::worker::Worker;
use super::OrderingPolicy;
use crate::error::{error_chain, PublishError};
use crate::message::OutboxMessage;
use crate::store::{Ack, Claimed, Disposition};

/// A batch split into one queue per partition key (a keyless message is a
/// queue of its own), drained one message per queue per wave.
#[derive(Debug)]
pub(super) struct Waves {
    queues: Vec<VecDeque<Claimed>>,
    stopped: HashSet<usize>,
}

impl Waves {
    /// Queues `claimed` (in position order) by key, keeping each key's order.
    pub(super) fn new(claimed: Vec<Claimed>) -> Self {
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
        Self {
            queues,
            stopped: HashSet::new(),
        }
    }

    /// The next wave: the head of every queue still going, tagged with its
    /// queue; with `runs`, every message left in those queues, in position
    /// order. A queue whose head lies in a bucket not in `owned` stops for
    /// good. Empty when nothing is left to publish.
    pub(super) fn next(&mut self, owned: &HashSet<i32>, runs: bool) -> Vec<(usize, Claimed)> {
        let mut wave = Vec::new();
        for (i, q) in self.queues.iter_mut().enumerate() {
            if self.stopped.contains(&i) {
                continue;
            }
            if q.front().is_some_and(|c| !owned.contains(&c.bucket)) {
                self.stopped.insert(i);
                continue;
            }
            if runs {
                wave.extend(q.drain(..).map(|c| (i, c)));
            } else if let Some(c) = q.pop_front() {
                wave.push((i, c));
            }
        }
        if runs {
            wave.sort_unstable_by_key(|(_, c)| c.message.seq);
        }
        wave
    }

    /// Publishes nothing more from `queue` in this batch.
    pub(super) fn stop(&mut self, queue: usize) {
        self.stopped.insert(queue);
    }
}

/// What becomes of a message after the publisher's `result` for it, at
/// `now`: published; retried after the destination's `Retry-After` or the
/// policy's backoff; or dead-lettered when the failure is permanent or the
/// attempts are used up. Under [`OrderingPolicy::Ordered`] a failing keyed
/// message blocks its key.
pub(super) fn disposition(
    result: Result<(), PublishError>,
    m: &OutboxMessage,
    policy: OrderingPolicy,
    retry: &RetryPolicy,
    now: DateTime<Utc>,
) -> Disposition {
    let e = match result {
        Ok(()) => return Disposition::Published,
        Err(e) => e,
    };
    let block_key = blocks_on_failure(policy, m);
    let error = error_chain(&e);
    let attempt = m.attempt.max(1) as u32;
    if !e.is_transient() || retry.gives_up_after(attempt) {
        tracing::warn!(id = %m.id, topic = %m.topic, attempt, error = %error, "outbox: message dead-lettered");
        Disposition::Dead { error, block_key }
    } else {
        let delay = e
            .retry_after()
            .unwrap_or_else(|| retry.jittered_delay(attempt))
            .min(MAX_RETRY_DELAY);
        tracing::debug!(id = %m.id, attempt, ?delay, error = %error, "outbox: publish failed, will retry");
        let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        Disposition::Retry {
            at,
            error,
            block_key,
        }
    }
}

/// Whether a failure of `m` holds back the later messages of its key.
pub(super) fn blocks_on_failure(policy: OrderingPolicy, m: &OutboxMessage) -> bool {
    policy == OrderingPolicy::Ordered && m.partition_key.is_some()
}

/// Whether a disposition holds back the later messages of its key.
pub(super) fn blocks_key(d: &Disposition) -> bool {
    match d {
        Disposition::Published => false,
        Disposition::Retry { block_key, .. } | Disposition::Dead { block_key, .. } => *block_key,
    }
}

/// The acknowledgement of a claimed message.
pub(super) fn ack_of(c: &Claimed, disposition: Disposition) -> Ack {
    let m = &c.message;
    Ack {
        seq: m.seq,
        bucket: c.bucket,
        partition_key: m.partition_key.clone(),
        attempts: m.attempt,
        retried: m.attempt > 1,
        key_sequence: m.key_sequence,
        disposition,
    }
}

impl Worker {
    /// Publishes in waves of at most one message per partition key, or, to
    /// a publisher that keeps a key's order within a call, in one call with
    /// each key's messages as a run. A message left out (never sent, sent
    /// in a call that was abandoned, or sent behind an earlier message of
    /// its key that failed in the same call) gets no acknowledgement: it
    /// stays pending.
    pub(super) async fn publish_batch(&mut self, claimed: Vec<Claimed>) -> Vec<Ack> {
        let runs = self.publisher.keeps_key_order();
        let mut waves = Waves::new(claimed);
        let mut acks = Vec::new();
        loop {
            // Stopping: no new publisher call; what went out is
            // acknowledged, the rest waits for the buckets' next owner.
            if self.shutdown.requested() {
                break;
            }
            // A bucket lost since the claim (a renewal during the last wave
            // found it taken) belongs to another relay now: publish nothing
            // more of it.
            let owned: HashSet<i32> = self.leases.iter().map(|l| l.bucket).collect();
            let taken = waves.next(&owned, runs);
            if taken.is_empty() {
                break;
            }
            // A row that could not be read whole is dead-lettered with the
            // reason, never published without what it lacks; under the
            // ordered policy it blocks its key like any dead letter, and
            // the rest of the key's run stays pending.
            let mut wave = Vec::with_capacity(taken.len());
            let mut cut: HashSet<usize> = HashSet::new();
            for (queue, c) in taken {
                if cut.contains(&queue) {
                    continue;
                }
                if c.undecodable.is_none() {
                    wave.push((queue, c));
                    continue;
                }
                let why = c.undecodable.as_deref().unwrap_or_default();
                let policy = self.config.policy_for(&c.message.topic);
                let block_key = blocks_on_failure(policy, &c.message);
                tracing::warn!(
                    id = %c.message.id,
                    position = c.message.seq,
                    error = %why,
                    "outbox: a stored message could not be read; dead-lettered"
                );
                let d = Disposition::Dead {
                    error: format!("the stored message could not be read: {why}"),
                    block_key,
                };
                if block_key {
                    waves.stop(queue);
                    cut.insert(queue);
                }
                acks.push(ack_of(&c, d));
            }
            if wave.is_empty() {
                continue;
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
            // The payloads and headers move to the publisher, never copied:
            // what stays behind is all the acknowledgement needs.
            let batch: Vec<OutboxMessage> = wave
                .iter_mut()
                .map(|(_, c)| {
                    let payload = std::mem::take(&mut c.message.payload);
                    let headers = std::mem::take(&mut c.message.headers);
                    OutboxMessage {
                        payload,
                        headers,
                        ..c.message.clone()
                    }
                })
                .collect();
            let buckets: HashSet<i32> = wave.iter().map(|(_, c)| c.bucket).collect();
            let results = match self.publish_renewing(batch, &buckets).await {
                Call::Returned(results) => results,
                // Its results may never be trusted: nothing of this wave is
                // acknowledged, and the later waves of its keys must not go
                // out ahead of it.
                Call::Abandoned => break,
            };
            // After a key's first failure in the call, nothing more of the
            // key is acknowledged: its later messages go out behind it.
            let mut failed: HashSet<usize> = HashSet::new();
            let mut broken = 0usize;
            for ((queue, c), result) in wave.into_iter().zip(results) {
                if failed.contains(&queue) {
                    broken += usize::from(result.is_ok());
                    self.held_back = true;
                    continue;
                }
                if result.is_err() {
                    failed.insert(queue);
                }
                let policy = self.config.policy_for(&c.message.topic);
                let d = disposition(
                    result,
                    &c.message,
                    policy,
                    &self.config.retry,
                    self.clock.now(),
                );
                if blocks_key(&d) {
                    waves.stop(queue);
                }
                acks.push(ack_of(&c, d));
            }
            if broken > 0 {
                tracing::error!(
                    relay = %self.config.relay_id,
                    messages = broken,
                    "outbox relay: the publisher reported messages sent after an earlier \
                     message of their key failed in the same call, which breaks its promise \
                     to keep a key's order (Publisher::keeps_key_order); they are sent again, \
                     in order"
                );
            }
        }
        acks
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::memory::claimed;

    fn seqs(wave: &[(usize, Claimed)]) -> Vec<i64> {
        wave.iter().map(|(_, c)| c.message.seq).collect()
    }

    fn batch() -> Vec<Claimed> {
        vec![
            claimed(1, Some("a"), 0),
            claimed(2, Some("a"), 0),
            claimed(3, Some("b"), 1),
            claimed(4, None, 0),
            claimed(5, Some("a"), 0),
            claimed(6, None, 1),
        ]
    }

    #[test]
    fn a_wave_holds_one_message_per_key_and_keys_keep_their_order() {
        let owned = HashSet::from([0, 1]);
        let mut waves = Waves::new(batch());
        assert_eq!(seqs(&waves.next(&owned, false)), [1, 3, 4, 6]);
        assert_eq!(seqs(&waves.next(&owned, false)), [2]);
        assert_eq!(seqs(&waves.next(&owned, false)), [5]);
        assert!(waves.next(&owned, false).is_empty());
    }

    #[test]
    fn a_wave_of_runs_holds_every_message_left_in_position_order() {
        let owned = HashSet::from([0, 1]);
        let mut waves = Waves::new(batch());
        assert_eq!(seqs(&waves.next(&owned, true)), [1, 2, 3, 4, 5, 6]);
        assert!(waves.next(&owned, true).is_empty());
        let mut waves = Waves::new(batch());
        assert_eq!(seqs(&waves.next(&HashSet::from([1]), true)), [3, 6]);
    }

    #[test]
    fn a_stopped_key_sends_nothing_more_and_the_others_go_on() {
        let owned = HashSet::from([0, 1]);
        let mut waves = Waves::new(vec![
            claimed(1, Some("a"), 0),
            claimed(2, Some("b"), 0),
            claimed(3, Some("a"), 0),
            claimed(4, Some("b"), 0),
        ]);
        let first = waves.next(&owned, false);
        let a = first[0].0;
        waves.stop(a);
        assert_eq!(seqs(&waves.next(&owned, false)), [4]);
        assert!(waves.next(&owned, false).is_empty());
    }

    #[test]
    fn a_bucket_lost_mid_batch_stops_its_keys_for_good() {
        let mut waves = Waves::new(batch());
        assert_eq!(seqs(&waves.next(&HashSet::from([1]), false)), [3, 6]);
        // Owning it again later (a new lease) does not resume the old claim.
        assert!(waves.next(&HashSet::from([0, 1]), false).is_empty());
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new()
            .initial_delay(Duration::from_secs(1))
            .max_delay(Duration::from_secs(8))
            .max_attempts(4)
            .jitter(false)
    }

    fn at_attempt(key: Option<&str>, attempt: i32) -> OutboxMessage {
        let mut m = claimed(1, key, 0).message;
        m.attempt = attempt;
        m
    }

    fn transient() -> Result<(), PublishError> {
        Err(PublishError::transient("down"))
    }

    #[test]
    fn transient_failures_retry_after_the_backoff_and_ordered_keys_block() {
        let now = Utc::now();
        let s = chrono::Duration::seconds;
        for (attempt, delay) in [(1, s(1)), (2, s(2)), (3, s(4))] {
            let m = at_attempt(Some("a"), attempt);
            match disposition(transient(), &m, OrderingPolicy::Ordered, &policy(), now) {
                Disposition::Retry {
                    at,
                    error,
                    block_key,
                } => {
                    assert_eq!(at - now, delay, "attempt {attempt}");
                    assert!(block_key);
                    assert!(error.contains("down"), "{error}");
                }
                d => panic!("attempt {attempt}: {d:?}"),
            }
        }
        let keyless = at_attempt(None, 1);
        let d = disposition(
            transient(),
            &keyless,
            OrderingPolicy::Ordered,
            &policy(),
            now,
        );
        assert!(!blocks_key(&d), "a keyless message has no key to block");
        let m = at_attempt(Some("a"), 1);
        let d = disposition(transient(), &m, OrderingPolicy::Unordered, &policy(), now);
        assert!(matches!(d, Disposition::Retry { .. }) && !blocks_key(&d));
    }

    #[test]
    fn the_last_attempt_and_permanent_failures_dead_letter() {
        let now = Utc::now();
        let last = at_attempt(Some("a"), 4);
        let d = disposition(transient(), &last, OrderingPolicy::Ordered, &policy(), now);
        assert!(
            matches!(
                d,
                Disposition::Dead {
                    block_key: true,
                    ..
                }
            ),
            "{d:?}"
        );
        let first = at_attempt(Some("a"), 1);
        let permanent = Err(PublishError::permanent("rejected"));
        let d = disposition(permanent, &first, OrderingPolicy::Unordered, &policy(), now);
        assert!(
            matches!(
                d,
                Disposition::Dead {
                    block_key: false,
                    ..
                }
            ),
            "{d:?}"
        );
        let ok = disposition(Ok(()), &last, OrderingPolicy::Ordered, &policy(), now);
        assert!(matches!(ok, Disposition::Published));
    }

    #[test]
    fn retry_after_replaces_the_backoff_up_to_thirty_days() {
        let now = Utc::now();
        let m = at_attempt(Some("a"), 1);
        let retry_at = |after: Duration| {
            let e = Err(PublishError::transient("busy").with_retry_after(after));
            match disposition(e, &m, OrderingPolicy::Ordered, &policy(), now) {
                Disposition::Retry { at, .. } => at - now,
                d => panic!("{d:?}"),
            }
        };
        // Beyond the policy's 8 s cap: the destination knows when it is back.
        assert_eq!(
            retry_at(Duration::from_secs(20)),
            chrono::Duration::seconds(20)
        );
        assert_eq!(
            retry_at(Duration::from_secs(90 * 86_400)),
            chrono::Duration::from_std(MAX_RETRY_DELAY).unwrap()
        );
    }

    #[test]
    fn jittered_retries_land_in_the_upper_half_of_the_backoff() {
        let now = Utc::now();
        let m = at_attempt(Some("a"), 2);
        let jittered = policy().jitter(true);
        for _ in 0..200 {
            match disposition(transient(), &m, OrderingPolicy::Ordered, &jittered, now) {
                Disposition::Retry { at, .. } => {
                    let d = at - now;
                    assert!(
                        d >= chrono::Duration::seconds(1) && d <= chrono::Duration::seconds(2),
                        "{d}"
                    );
                }
                d => panic!("{d:?}"),
            }
        }
    }

    #[test]
    fn an_ack_says_whether_the_message_failed_before() {
        let mut c = claimed(7, Some("a"), 3);
        let first = ack_of(&c, Disposition::Published);
        assert_eq!((first.seq, first.bucket, first.attempts), (7, 3, 1));
        assert!(!first.retried);
        c.message.attempt = 2;
        c.message.key_sequence = Some(9);
        let again = ack_of(&c, Disposition::Published);
        assert!(again.retried, "a retried message may hold its key's block");
        assert_eq!(again.key_sequence, Some(9));
        assert_eq!(again.partition_key.as_deref(), Some("a"));
    }
}
