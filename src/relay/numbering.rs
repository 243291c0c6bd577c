//! Per-key numbering: each keyed message published as 1, 2, 3, ... of its
//! key.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::store::sealed::StoreOps;
use crate::store::{Ack, AckReport, Claimed, Disposition, Lease};

/// Most keys [`KnownNumbers`] remembers; past it, it starts over.
const MAX_KNOWN_KEYS: usize = 100_000;

/// The last number stored for each key this relay numbered or read, while
/// it holds the key's bucket: what a read of the store would return, so a
/// batch of known keys is numbered without one.
///
/// Only a bucket's owner stores its keys' numbers, with an acknowledgement
/// fenced by the bucket's lease epoch. So a number learnt under the epoch
/// the relay still holds cannot have moved since: each entry keeps the
/// bucket and the epoch it was learnt under, and counts only while the
/// relay holds that bucket under that epoch. An entry is learnt from a
/// read, or from an acknowledgement that stored it; one the store may have
/// changed in a way this cannot follow (a failed message's number spent, a
/// fenced or failed acknowledgement) is forgotten, and read again.
///
/// Two guards go beyond the leases, for when the relay's belief that it
/// holds a lease could be wrong in time: an entry older than the lease
/// TTL by the wall clock is read again (a process suspended past its
/// lease, whose monotonic clock stood still, does not number from what it
/// knew before); and after an acknowledgement that failed (its commit may
/// still land), nothing is learnt for a lease TTL.
#[derive(Debug, Default)]
pub(super) struct KnownNumbers {
    known: HashMap<String, Known>,
    /// The bucket count the entries were learnt under: keys would map to
    /// other buckets under another.
    bucket_count: i32,
    /// Nothing is learnt before this.
    quiet_until: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    number: i64,
    bucket: i32,
    epoch: i64,
    /// When it was learnt, by the wall clock.
    at: SystemTime,
}

impl KnownNumbers {
    /// Forgets everything: the next batch reads its numbers.
    pub(super) fn forget(&mut self) {
        self.known.clear();
    }

    /// Forgets everything after an acknowledgement whose outcome is
    /// unknown, and learns nothing for `ttl`: the commit may land after a
    /// read that does not see it yet.
    pub(super) fn forget_after_failure(&mut self, now: SystemTime, ttl: Duration) {
        self.forget();
        self.quiet_until = Some(now + ttl);
    }

    /// The last stored number of `key`, in `bucket`, if known under a
    /// lease held now and learnt within `ttl` before `now`.
    fn get(
        &self,
        key: &str,
        bucket: i32,
        leases: &[Lease],
        now: SystemTime,
        ttl: Duration,
    ) -> Option<i64> {
        let k = self.known.get(key)?;
        let fresh = now.duration_since(k.at).is_ok_and(|age| age < ttl);
        (fresh && k.bucket == bucket && epoch_of(leases, bucket) == Some(k.epoch))
            .then_some(k.number)
    }

    fn learn(&mut self, key: &str, known: Known) {
        if self.quiet_until.is_some_and(|q| known.at < q) {
            return;
        }
        if self.known.len() >= MAX_KNOWN_KEYS && !self.known.contains_key(key) {
            self.known.clear();
        }
        self.known.insert(key.to_owned(), known);
    }

    /// Takes in a written acknowledgement of `acks`, fenced by `leases`:
    /// keys whose messages were all published now stand at their highest
    /// number; keys with a failed message are forgotten (the store may have
    /// spent its number); a fenced acknowledgement forgets everything.
    pub(super) fn acknowledged(
        &mut self,
        acks: &[Ack],
        report: &AckReport,
        leases: &[Lease],
        now: SystemTime,
    ) {
        if report.fenced > 0 {
            self.forget();
            return;
        }
        let mut stored: HashMap<&str, Option<Known>> = HashMap::new();
        for a in acks {
            let Some(key) = a.partition_key.as_deref() else {
                continue;
            };
            let known = match (&a.disposition, a.key_sequence, epoch_of(leases, a.bucket)) {
                (Disposition::Published, Some(number), Some(epoch)) => Some(Known {
                    number,
                    bucket: a.bucket,
                    epoch,
                    at: now,
                }),
                _ => None,
            };
            let entry = stored.entry(key).or_insert(known);
            *entry = match (*entry, known) {
                (Some(was), Some(this)) => Some(if this.number > was.number { this } else { was }),
                _ => None,
            };
        }
        for (key, known) in stored {
            match known {
                Some(k) => self.learn(key, k),
                None => {
                    self.known.remove(key);
                }
            }
        }
    }
}

/// The epoch of `bucket`'s lease among `leases`, if held.
fn epoch_of(leases: &[Lease], bucket: i32) -> Option<i64> {
    leases.iter().find(|l| l.bucket == bucket).map(|l| l.epoch)
}

/// Gives each keyed message its per-key sequence number: the last one
/// published for the key, plus its rank among the key's messages in this
/// batch. Only the bucket's owner numbers a key, and a number is stored
/// only with a successful, fenced acknowledgement, so a redelivery gets
/// the same number and numbers stay dense. The last numbers come from
/// `known` where it has them under `leases` (learnt within `ttl`, the
/// lease TTL), from the store otherwise. Returns whether it read the
/// store.
/// (A free function: the worker holds the listener, which is not `Sync`.)
pub(super) async fn number_keys(
    store: &dyn StoreOps,
    claimed: &mut [Claimed],
    known: &mut KnownNumbers,
    leases: &[Lease],
    bucket_count: i32,
    ttl: Duration,
) -> Result<bool> {
    let now = SystemTime::now();
    if known.bucket_count != bucket_count {
        known.forget();
        known.bucket_count = bucket_count;
    }
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut unknown: Vec<(String, i32)> = Vec::new();
    for c in claimed.iter() {
        let Some(key) = &c.message.partition_key else {
            continue;
        };
        if last.contains_key(key) {
            continue;
        }
        match known.get(key, c.bucket, leases, now, ttl) {
            Some(n) => {
                last.insert(key.clone(), n);
            }
            None => unknown.push((key.clone(), c.bucket)),
        }
    }
    unknown.sort_unstable();
    unknown.dedup_by(|a, b| a.0 == b.0);
    let read = !unknown.is_empty();
    if read {
        let keys: Vec<String> = unknown.iter().map(|(k, _)| k.clone()).collect();
        let stored = store.key_sequences(&keys).await?;
        for (key, bucket) in unknown {
            // A key never numbered stands at 0.
            let number = stored.get(&key).copied().unwrap_or(0);
            if let Some(epoch) = epoch_of(leases, bucket) {
                known.learn(
                    &key,
                    Known {
                        number,
                        bucket,
                        epoch,
                        at: now,
                    },
                );
            }
            last.insert(key, number);
        }
    }
    assign_numbers(claimed, last);
    Ok(read)
}

/// Numbers each keyed message after the last number `last` holds for its
/// key, in batch order.
fn assign_numbers(claimed: &mut [Claimed], mut last: HashMap<String, i64>) {
    for c in claimed.iter_mut() {
        if let Some(k) = &c.message.partition_key {
            let n = last.entry(k.clone()).or_insert(0);
            *n += 1;
            c.message.key_sequence = Some(*n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{claimed, MemoryStore};

    const TTL: Duration = Duration::from_secs(10);

    fn lease(bucket: i32, epoch: i64) -> Lease {
        Lease { bucket, epoch }
    }

    fn published(c: &Claimed) -> Ack {
        Ack::of(c, Disposition::Published)
    }

    /// Numbers a batch of `keys` (all in bucket 0) against an empty store,
    /// after `known`: what each message got, and whether the store was read.
    async fn number_reading(
        known: &mut KnownNumbers,
        keys: &[&str],
        leases: &[Lease],
    ) -> (Vec<Claimed>, bool) {
        let store = MemoryStore::new(4);
        let mut batch: Vec<Claimed> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| claimed(i as i64 + 1, Some(k), 0))
            .collect();
        let read = number_keys(&store, &mut batch, known, leases, 4, TTL)
            .await
            .unwrap();
        (batch, read)
    }

    /// [`number_reading`] without whether it read.
    async fn number(known: &mut KnownNumbers, keys: &[&str], leases: &[Lease]) -> Vec<Claimed> {
        number_reading(known, keys, leases).await.0
    }

    fn numbers(batch: &[Claimed]) -> Vec<Option<i64>> {
        batch.iter().map(|c| c.message.key_sequence).collect()
    }

    #[tokio::test]
    async fn numbers_learnt_from_an_acknowledgement_count_only_under_its_lease() {
        let held = [lease(0, 3)];
        let mut known = KnownNumbers::default();
        // Nothing known: the (empty) store says every key starts at 1.
        let (batch, read) = number_reading(&mut known, &["a", "a", "b"], &held).await;
        assert_eq!(numbers(&batch), [Some(1), Some(2), Some(1)]);
        assert!(read);
        let acks: Vec<Ack> = batch.iter().map(published).collect();
        known.acknowledged(&acks, &AckReport::default(), &held, SystemTime::now());
        // Known now, under the same lease: the store (still empty here)
        // is not what numbers them, nor read.
        let (batch, read) = number_reading(&mut known, &["a", "b"], &held).await;
        assert_eq!(numbers(&batch), [Some(3), Some(2)]);
        assert!(!read);
        // Unacknowledged numbers are not learnt: the same batch numbers
        // alike again.
        let again = number(&mut known, &["a", "b"], &held).await;
        assert_eq!(numbers(&again), [Some(3), Some(2)]);
        // The bucket lost and taken again under a later epoch: another
        // relay may have numbered its keys meanwhile, so the store says.
        let batch = number(&mut known, &["a"], &[lease(0, 5)]).await;
        assert_eq!(numbers(&batch), [Some(1)]);
        // Not held at all: the store says, and nothing is learnt.
        let mut fresh = KnownNumbers::default();
        let batch = number(&mut fresh, &["a"], &[]).await;
        let acks: Vec<Ack> = batch.iter().map(published).collect();
        fresh.acknowledged(&acks, &AckReport::default(), &[], SystemTime::now());
        assert!(fresh.known.is_empty());
    }

    #[tokio::test]
    async fn a_failed_message_or_a_fenced_acknowledgement_forgets_numbers() {
        let held = [lease(0, 1)];
        let mut known = KnownNumbers::default();
        let batch = number(&mut known, &["a", "b", "b"], &held).await;
        known.acknowledged(
            &batch.iter().map(published).collect::<Vec<_>>(),
            &AckReport::default(),
            &held,
            SystemTime::now(),
        );
        let batch = number(&mut known, &["a", "b", "b"], &held).await;
        assert_eq!(numbers(&batch), [Some(2), Some(3), Some(4)]);
        // b's second message failed (its number may be spent): b is read
        // again; a's published number is learnt.
        let mut acks: Vec<Ack> = batch.iter().map(published).collect();
        acks[2].disposition = Disposition::Dead {
            error: "refused".into(),
            block_key: false,
        };
        let now = SystemTime::now();
        known.acknowledged(&acks, &AckReport::default(), &held, now);
        assert_eq!(known.get("a", 0, &held, now, TTL), Some(2));
        assert_eq!(known.get("b", 0, &held, now, TTL), None);
        // The key claimed in another bucket is another matter.
        assert_eq!(known.get("a", 1, &held, now, TTL), None);
        // Some of an acknowledgement fenced: nothing is trusted.
        let fenced = AckReport {
            fenced: 1,
            fenced_buckets: vec![0],
            ..AckReport::default()
        };
        known.acknowledged(&acks[..1], &fenced, &held, now);
        assert!(known.known.is_empty());
        // Another bucket count maps keys to other buckets: forgotten.
        known.learn(
            "a",
            Known {
                number: 9,
                bucket: 0,
                epoch: 1,
                at: now,
            },
        );
        let store = MemoryStore::new(8);
        let mut batch = vec![claimed(1, Some("a"), 0)];
        number_keys(&store, &mut batch, &mut known, &held, 8, TTL)
            .await
            .unwrap();
        assert_eq!(numbers(&batch), [Some(1)]);
    }

    #[test]
    fn numbers_continue_from_the_last_published_one_in_batch_order() {
        let mut batch = vec![
            claimed(1, Some("a"), 0),
            claimed(2, Some("b"), 0),
            claimed(3, None, 0),
            claimed(4, Some("a"), 0),
        ];
        assign_numbers(&mut batch, HashMap::from([("a".to_owned(), 5)]));
        let numbers: Vec<Option<i64>> = batch.iter().map(|c| c.message.key_sequence).collect();
        assert_eq!(numbers, [Some(6), Some(1), None, Some(7)]);
    }

    #[test]
    fn numbers_go_stale_by_the_wall_clock_and_learning_pauses_after_a_failure() {
        let held = [lease(0, 1)];
        let now = SystemTime::now();
        let mut known = KnownNumbers::default();
        let at = |secs: u64| now + Duration::from_secs(secs);
        known.learn(
            "a",
            Known {
                number: 4,
                bucket: 0,
                epoch: 1,
                at: now,
            },
        );
        assert_eq!(known.get("a", 0, &held, at(9), TTL), Some(4));
        // A lease TTL later by the wall clock (a process suspended while
        // its monotonic clock stood still), or learnt in the future (the
        // wall clock went back): read again.
        assert_eq!(known.get("a", 0, &held, at(10), TTL), None);
        assert_eq!(
            known.get("a", 0, &held, now - Duration::from_secs(1), TTL),
            None
        );
        // After a failed acknowledgement: nothing learnt for a TTL, from a
        // read or an acknowledgement.
        known.forget_after_failure(now, TTL);
        assert!(known.known.is_empty());
        let entry = |secs| Known {
            number: 7,
            bucket: 0,
            epoch: 1,
            at: at(secs),
        };
        known.learn("a", entry(9));
        assert!(known.known.is_empty());
        let acks = [published(&{
            let mut c = claimed(1, Some("a"), 0);
            c.message.key_sequence = Some(7);
            c
        })];
        known.acknowledged(&acks, &AckReport::default(), &held, at(9));
        assert!(known.known.is_empty());
        known.acknowledged(&acks, &AckReport::default(), &held, at(10));
        assert_eq!(known.get("a", 0, &held, at(11), TTL), Some(7));
    }
}
