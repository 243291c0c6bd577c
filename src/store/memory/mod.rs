//! An in-memory store for unit tests of the relay's own rules (waves,
//! prefetch, fencing, retries) in milliseconds and without a database.
//!
//! It keeps the contract the real backends keep: buckets hashed from the
//! partition key (by position for keyless messages), leases with owner,
//! epoch and expiry, acknowledgements fenced by owner and epoch through
//! [`AckPlan`], blocked keys, retry due times, dead letters, per-key
//! sequences, the claim's exclusion list and retention. Lease time follows
//! tokio's clock, so tests run on paused time.
//!
//! A handle made by [`MemoryStore::for_relay`] attributes its claims to a
//! relay, which lets the store check that no acknowledgement of a message
//! applies after the bucket it was claimed in changed hands, and can be
//! stalled with its [`Gate`] like a relay process that stops answering.
//! [`MemoryStore::maintenance_gate`] holds only the maintenance calls
//! (`stats`, `vacuum`, `purge_published`) of every handle, like a slow
//! statistics query or vacuum.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use uuid::Uuid;

use super::sealed::StoreOps;
use super::{
    Ack, AckBatch, AckPlan, AckReport, Acquire, Claim, Claimed, ClaimedBatch, DeadLetter,
    Heartbeat, Lease, Purge, Release, Renew, Store, StoreStats, WakeSource,
};
use crate::error::Result;
use crate::message::{NewMessage, OutboxMessage};

/// A shared in-memory outbox; clones share everything, gate included.
#[derive(Clone)]
pub(crate) struct MemoryStore {
    shared: Arc<Shared>,
    /// The relay this handle's claims are attributed to.
    relay: Option<Uuid>,
    gate: Option<watch::Receiver<bool>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    signal: Arc<Notify>,
    /// Open unless a test holds the maintenance calls.
    maintenance: Arc<watch::Sender<bool>>,
    /// Wall time at `at`: the store's clock follows tokio's.
    wall: DateTime<Utc>,
    at: Instant,
}

/// Holds a store handle's operations while closed, before and after they
/// apply: a stalled process, whose requests and replies are late.
#[derive(Debug, Clone)]
pub(crate) struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    pub(crate) fn close(&self) {
        self.0.send_replace(false);
    }

    pub(crate) fn open(&self) {
        self.0.send_replace(true);
    }
}

/// A message waiting to be published.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) message: OutboxMessage,
    /// Attempts made so far.
    pub(crate) attempts: i32,
    pub(crate) available_at: Option<DateTime<Utc>>,
    pub(crate) last_error: Option<String>,
}

/// One call of `ack`, as the store saw it.
#[derive(Debug, Clone)]
pub(crate) struct AckRecord {
    pub(crate) relay: Uuid,
    pub(crate) now: DateTime<Utc>,
    pub(crate) acks: Vec<Ack>,
    pub(crate) report: AckReport,
}

/// One call of `claim`, as the store saw it.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRecord {
    pub(crate) exclude: Vec<i64>,
    pub(crate) got: Vec<i64>,
}

#[derive(Debug, Clone, Copy)]
struct LeaseRow {
    owner: Option<Uuid>,
    epoch: i64,
    /// `None`: released, free at once.
    expires: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    bucket_count: i32,
    next_seq: i64,
    messages: BTreeMap<i64, Pending>,
    /// Key -> positions of the messages that block it (each failing head
    /// blocks the key until it goes through).
    blocked: BTreeMap<String, BTreeSet<i64>>,
    dead_letters: Vec<DeadLetter>,
    discarded: Vec<DeadLetter>,
    /// Retained published messages and when they were published.
    published: Vec<(OutboxMessage, DateTime<Utc>)>,
    leases: Vec<LeaseRow>,
    relays: HashMap<Uuid, Instant>,
    key_sequences: HashMap<String, i64>,
    /// (relay, position) -> (owner, epoch) of the bucket when that relay
    /// last claimed the message.
    claimed_under: HashMap<(Uuid, i64), (Option<Uuid>, i64)>,
    claims: Vec<ClaimRecord>,
    acks: Vec<AckRecord>,
    /// (relay, position) of every published acknowledgement that applied
    /// to a message still pending.
    acked_published: Vec<(Uuid, i64)>,
    violations: Vec<String>,
    dead_tuples: Option<i64>,
    autovacuum: Option<bool>,
    vacuums: usize,
    /// Parking calls so far.
    parks: usize,
    /// Stats calls so far.
    stats_reads: usize,
    /// Calls of `fold_key_sequences`.
    folds: usize,
    /// How long each of them takes.
    fold_delay: Duration,
    /// How long each parking call takes.
    park_delay: Duration,
    stats_delay: Duration,
    stats_fail: bool,
    ack_delay: Duration,
    /// How many of the next acknowledgements fail without applying.
    failing_acks: usize,
    /// Maintenance calls begun so far.
    maintenance_calls: usize,
    /// Maintenance calls in progress now, and the most ever at once.
    maintenance_running: usize,
    maintenance_most: usize,
}

/// FNV-1a: any stable hash spreads keys over buckets; this one is short.
fn hash(key: &str) -> u32 {
    key.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The bucket of a message: its key's hash, or its position if keyless.
fn bucket_of(key: Option<&str>, seq: i64, bucket_count: i32) -> i32 {
    let n = i64::from(bucket_count.max(1));
    match key {
        Some(k) => (i64::from(hash(k) & 0x7fff_ffff) % n) as i32,
        None => seq.rem_euclid(n) as i32,
    }
}

/// A claimed message with no store behind it, for tests of pure rules.
pub(crate) fn claimed(seq: i64, key: Option<&str>, bucket: i32) -> Claimed {
    let mut m = NewMessage::bytes("t", seq.to_be_bytes().to_vec());
    m.partition_key = key.map(str::to_owned);
    Claimed {
        message: outbox_message(m, seq, DateTime::<Utc>::UNIX_EPOCH),
        bucket,
        undecodable: None,
    }
}

fn outbox_message(m: NewMessage, seq: i64, created_at: DateTime<Utc>) -> OutboxMessage {
    OutboxMessage {
        seq,
        id: m.id,
        topic: m.topic,
        partition_key: m.partition_key,
        event_type: m.event_type,
        schema_version: m.schema_version,
        payload: m.payload,
        content_type: m.content_type,
        headers: m.headers,
        created_at,
        attempt: 1,
        key_sequence: None,
    }
}

impl MemoryStore {
    /// An empty outbox whose key space is split into `bucket_count` buckets.
    pub(crate) fn new(bucket_count: i32) -> Self {
        let leases = (0..bucket_count)
            .map(|_| LeaseRow {
                owner: None,
                epoch: 0,
                expires: None,
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    bucket_count,
                    next_seq: 1,
                    leases,
                    ..State::default()
                }),
                signal: Arc::new(Notify::new()),
                maintenance: Arc::new(watch::channel(true).0),
                wall: Utc::now(),
                at: Instant::now(),
            }),
            relay: None,
            gate: None,
        }
    }

    /// A handle for `relay`: its claims are attributed to it, and its
    /// operations wait while the returned gate is closed.
    pub(crate) fn for_relay(&self, relay: Uuid) -> (Self, Gate) {
        let (tx, rx) = watch::channel(true);
        let handle = Self {
            shared: self.shared.clone(),
            relay: Some(relay),
            gate: Some(rx),
        };
        (handle, Gate(Arc::new(tx)))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("poisoned")
    }

    fn now(&self) -> DateTime<Utc> {
        let elapsed = Instant::now().saturating_duration_since(self.shared.at);
        self.shared.wall + chrono::Duration::from_std(elapsed).expect("elapsed time in range")
    }

    async fn pass_gate(&self) {
        if let Some(gate) = &self.gate {
            let mut gate = gate.clone();
            // A dropped gate counts as open.
            let _ = gate.wait_for(|open| *open).await;
        }
    }

    /// Starts a maintenance call: counted while it runs (also when it is
    /// dropped half way), and held while the maintenance gate is closed.
    async fn begin_maintenance(&self) -> MaintenanceCall {
        {
            let mut s = self.state();
            s.maintenance_calls += 1;
            s.maintenance_running += 1;
            s.maintenance_most = s.maintenance_most.max(s.maintenance_running);
        }
        let call = MaintenanceCall(self.shared.clone());
        self.pass_gate().await;
        let mut gate = self.shared.maintenance.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        call
    }

    /// A gate over the maintenance calls (`stats`, `vacuum`,
    /// `purge_published`) of every handle of this store: while closed they
    /// take as long as a slow vacuum.
    pub(crate) fn maintenance_gate(&self) -> Gate {
        Gate(self.shared.maintenance.clone())
    }

    /// Maintenance calls begun so far.
    pub(crate) fn maintenance_calls(&self) -> usize {
        self.state().maintenance_calls
    }

    /// The most maintenance calls that ever ran at once.
    pub(crate) fn most_maintenance_at_once(&self) -> usize {
        self.state().maintenance_most
    }

    /// Commits a message and wakes the relays, like `commit`; `None` if its
    /// id is already pending (the real backends skip such a row too).
    pub(crate) fn enqueue(&self, m: NewMessage) -> Option<i64> {
        let now = self.now();
        let seq = {
            let mut s = self.state();
            if s.messages.values().any(|p| p.message.id == m.id) {
                return None;
            }
            let seq = s.next_seq;
            s.next_seq += 1;
            s.messages.insert(
                seq,
                Pending {
                    message: outbox_message(m, seq, now),
                    attempts: 0,
                    available_at: None,
                    last_error: None,
                },
            );
            seq
        };
        self.shared.signal.notify_waiters();
        self.shared.signal.notify_one();
        Some(seq)
    }

    /// The bucket a message lies in.
    pub(crate) fn bucket_of(&self, m: &OutboxMessage) -> i32 {
        let n = self.state().bucket_count;
        bucket_of(m.partition_key.as_deref(), m.seq, n)
    }

    /// Another owner takes `bucket` now, as if its lease had expired and a
    /// relay this test does not run had acquired it; returns that lease.
    pub(crate) fn take_over(&self, bucket: i32, ttl: Duration) -> Lease {
        let mut s = self.state();
        let row = &mut s.leases[bucket as usize];
        row.owner = Some(Uuid::now_v7());
        row.epoch += 1;
        row.expires = Some(Instant::now() + ttl);
        Lease {
            bucket,
            epoch: row.epoch,
        }
    }

    /// Who holds `bucket` now (an expired lease counts as held by nobody).
    pub(crate) fn holder(&self, bucket: i32) -> Option<Uuid> {
        let s = self.state();
        let row = s.leases[bucket as usize];
        row.owner
            .filter(|_| row.expires.is_some_and(|e| e > Instant::now()))
    }

    pub(crate) fn pending(&self) -> Vec<Pending> {
        self.state().messages.values().cloned().collect()
    }

    pub(crate) fn pending_message(&self, seq: i64) -> Option<Pending> {
        self.state().messages.get(&seq).cloned()
    }

    pub(crate) fn dead_letters(&self) -> Vec<DeadLetter> {
        self.state().dead_letters.clone()
    }

    /// Dead letters discarded so far.
    pub(crate) fn discarded(&self) -> Vec<DeadLetter> {
        self.state().discarded.clone()
    }

    /// Discards every dead letter and lifts the blocks they hold, as
    /// `discard_dead_letter` does; returns how many.
    pub(crate) fn discard_dead_letters(&self) -> usize {
        let n = {
            let mut s = self.state();
            let gone = std::mem::take(&mut s.dead_letters);
            for d in &gone {
                if let Some(k) = &d.message.partition_key {
                    s.lift(k, d.message.seq);
                }
            }
            let n = gone.len();
            s.discarded.extend(gone);
            n
        };
        self.shared.signal.notify_one();
        n
    }

    /// Key -> position of the earliest message that blocks it.
    pub(crate) fn blocked(&self) -> BTreeMap<String, i64> {
        let s = self.state();
        s.blocked
            .iter()
            .filter_map(|(k, seqs)| Some((k.clone(), *seqs.first()?)))
            .collect()
    }

    /// Retained published messages.
    pub(crate) fn published(&self) -> Vec<OutboxMessage> {
        self.state()
            .published
            .iter()
            .map(|(m, _)| m.clone())
            .collect()
    }

    pub(crate) fn key_sequence(&self, key: &str) -> Option<i64> {
        self.state().key_sequences.get(key).copied()
    }

    pub(crate) fn acks(&self) -> Vec<AckRecord> {
        self.state().acks.clone()
    }

    pub(crate) fn claims(&self) -> Vec<ClaimRecord> {
        self.state().claims.clone()
    }

    /// (relay, position) of every published acknowledgement that applied.
    pub(crate) fn acked_published(&self) -> Vec<(Uuid, i64)> {
        self.state().acked_published.clone()
    }

    /// Acknowledgements that applied although the bucket changed hands
    /// between the relay's claim of the message and the acknowledgement.
    pub(crate) fn fencing_violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }

    /// What `stats` reports about the table's upkeep.
    pub(crate) fn set_table_upkeep(&self, dead_tuples: Option<i64>, autovacuum: Option<bool>) {
        let mut s = self.state();
        s.dead_tuples = dead_tuples;
        s.autovacuum = autovacuum;
    }

    pub(crate) fn vacuums(&self) -> usize {
        self.state().vacuums
    }

    /// Parking calls so far.
    pub(crate) fn parks(&self) -> usize {
        self.state().parks
    }

    /// Stats calls so far.
    pub(crate) fn stats_reads(&self) -> usize {
        self.state().stats_reads
    }

    /// How many times a relay asked to fold recorded key numbers (this
    /// store records them in place, and folds nothing).
    pub(crate) fn folds(&self) -> usize {
        self.state().folds
    }

    /// Makes each fold of key numbers take `delay`.
    pub(crate) fn set_fold_delay(&self, delay: Duration) {
        self.state().fold_delay = delay;
    }

    /// Makes each statistics read take `delay` (a table of tens of
    /// millions of messages to count), and fail at its end if `fail` (a
    /// statement timeout).
    pub(crate) fn set_stats_delay(&self, delay: Duration, fail: bool) {
        let mut s = self.state();
        s.stats_delay = delay;
        s.stats_fail = fail;
    }

    /// Makes each parking call take `delay` (a large parking, a slow
    /// connection).
    pub(crate) fn set_park_delay(&self, delay: Duration) {
        self.state().park_delay = delay;
    }

    /// Makes the next `n` acknowledgements fail without applying (a lost
    /// connection before the commit).
    pub(crate) fn fail_acks(&self, n: usize) {
        self.state().failing_acks = n;
    }

    /// Makes each acknowledgement take `delay` before it is written (a
    /// slow commit).
    pub(crate) fn set_ack_delay(&self, delay: Duration) {
        self.state().ack_delay = delay;
    }
}

impl State {
    /// Whether `relay` holds `bucket` at `epoch`. Like the real backends,
    /// expiry alone does not fence: only another owner does.
    fn holds(&self, relay: Uuid, l: &Lease) -> bool {
        self.leases
            .get(l.bucket as usize)
            .is_some_and(|row| row.owner == Some(relay) && row.epoch == l.epoch)
    }

    /// Applies an acknowledgement plan, in the order the SQLite backend
    /// writes it.
    /// `now` is the relay's clock (stamped on retained messages), `dead_at`
    /// the store's.
    fn apply(
        &mut self,
        relay: Uuid,
        plan: &AckPlan<'_>,
        retain: bool,
        now: DateTime<Utc>,
        dead_at: DateTime<Utc>,
    ) {
        for seq in &plan.published {
            if let Some(p) = self.messages.remove(seq) {
                self.acked_published.push((relay, *seq));
                if retain {
                    let mut m = p.message;
                    m.attempt = p.attempts + 1;
                    self.published.push((m, now));
                }
            }
        }
        for (k, n) in &plan.key_sequences {
            let last = self.key_sequences.entry((*k).to_owned()).or_insert(0);
            *last = (*last).max(*n);
        }
        for (k, seq) in &plan.unblock {
            self.lift(k, *seq);
        }
        for (seq, attempts, at, error) in &plan.retry {
            if let Some(p) = self.messages.get_mut(seq) {
                p.attempts = *attempts;
                p.available_at = Some(*at);
                p.last_error = Some((*error).to_owned());
            }
        }
        for (seq, attempts, error) in &plan.dead {
            if let Some(p) = self.messages.remove(seq) {
                let mut message = p.message;
                message.attempt = *attempts;
                // A message dead-lettered again under the same id replaces
                // the older dead letter.
                self.dead_letters.retain(|d| d.message.id != message.id);
                self.dead_letters.push(DeadLetter {
                    message,
                    attempts: *attempts,
                    last_error: (*error).to_owned(),
                    dead_at,
                });
            }
        }
        for (k, seq) in &plan.block {
            self.blocked
                .entry((*k).to_owned())
                .or_default()
                .insert(*seq);
        }
    }

    /// Lifts the block the message at `seq` holds on `key`, if any.
    fn lift(&mut self, key: &str, seq: i64) {
        if let Some(seqs) = self.blocked.get_mut(key) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.blocked.remove(key);
            }
        }
    }

    /// Whether a block on `key` stands before `seq`.
    fn blocked_before(&self, key: Option<&str>, seq: i64) -> bool {
        key.and_then(|k| self.blocked.get(k))
            .and_then(|seqs| seqs.first())
            .is_some_and(|&b| b < seq)
    }

    /// Records acknowledgements that applied to a message `relay` claimed
    /// while another relay held its bucket, or claimed under an epoch that
    /// has moved on since.
    fn check_fencing(&mut self, relay: Uuid, acks: &[Ack], applied: impl Fn(i32) -> bool) {
        for a in acks.iter().filter(|a| applied(a.bucket)) {
            let now = self.leases[a.bucket as usize];
            match self.claimed_under.get(&(relay, a.seq)) {
                Some(&(owner, epoch)) if owner == Some(relay) && epoch == now.epoch => {}
                Some(&(owner, epoch)) => self.violations.push(format!(
                    "relay {relay} acknowledged position {} of bucket {}: claimed while \
                     {owner:?} held it at epoch {epoch}, acknowledged at epoch {}",
                    a.seq, a.bucket, now.epoch
                )),
                // Unattributed handles are not checked.
                None => {}
            }
        }
    }
}

/// A maintenance call in progress; it ends when dropped.
struct MaintenanceCall(Arc<Shared>);

impl Drop for MaintenanceCall {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.state.lock() {
            s.maintenance_running -= 1;
        }
    }
}

mod ops;
#[cfg(test)]
mod tests;
