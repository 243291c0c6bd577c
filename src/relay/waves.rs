//! Waves: a batch published at most one message per partition key per
//! publisher call, and each publish result turned into an acknowledgement.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use tokio::time::Instant;

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
    /// queue. A queue whose head lies in a bucket not in `owned` stops for
    /// good. Empty when nothing is left to publish.
    pub(super) fn next(&mut self, owned: &HashSet<i32>) -> Vec<(usize, Claimed)> {
        let mut wave = Vec::new();
        for (i, q) in self.queues.iter_mut().enumerate() {
            if self.stopped.contains(&i) {
                continue;
            }
            if q.front().is_some_and(|c| !owned.contains(&c.bucket)) {
                self.stopped.insert(i);
                continue;
            }
            if let Some(c) = q.pop_front() {
                wave.push((i, c));
            }
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
    let block_key = policy == OrderingPolicy::Ordered && m.partition_key.is_some();
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
    /// Publishes in waves of at most one message per partition key.
    pub(super) async fn publish_batch(&mut self, claimed: Vec<Claimed>) -> Vec<Ack> {
        let mut waves = Waves::new(claimed);
        let mut acks = Vec::new();
        loop {
            // A bucket lost since the claim (a renewal during the last wave
            // found it taken) belongs to another relay now: publish nothing
            // more of it.
            let owned: HashSet<i32> = self.leases.iter().map(|l| l.bucket).collect();
            let wave = waves.next(&owned);
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
            let results = self.publish_renewing(batch).await;
            for ((queue, c), result) in wave.into_iter().zip(results) {
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
        }
        acks
    }
}
