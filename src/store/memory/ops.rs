//! The memory store's side of the backend contract: the operations the
//! relay runs.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::*;
use crate::store::TopicStats;

impl Store for MemoryStore {}

#[async_trait]
impl StoreOps for MemoryStore {
    async fn check_schema(&self) -> Result<()> {
        self.pass_gate().await;
        Ok(())
    }

    async fn bucket_count(&self) -> Result<i32> {
        self.pass_gate().await;
        Ok(self.state().bucket_count)
    }

    async fn heartbeat(&self, p: Heartbeat) -> Result<usize> {
        let Heartbeat { relay, ttl, .. } = p;
        self.pass_gate().await;
        let live = {
            let now = Instant::now();
            let mut s = self.state();
            s.relays.insert(relay, now + ttl);
            let gone = now.checked_sub(ttl.saturating_mul(10));
            s.relays
                .retain(|_, expires| gone.is_none_or(|g| *expires >= g));
            let others = s
                .relays
                .iter()
                .filter(|(r, expires)| **r != relay && **expires > now)
                .count();
            others + 1
        };
        self.pass_gate().await;
        Ok(live)
    }

    async fn renew(&self, p: Renew<'_>) -> Result<Vec<Lease>> {
        let Renew { relay, leases, ttl } = p;
        self.pass_gate().await;
        let kept = {
            let expires = Instant::now() + ttl;
            let mut s = self.state();
            let kept: Vec<Lease> = leases
                .iter()
                .filter(|l| s.holds(relay, l))
                .copied()
                .collect();
            for l in &kept {
                s.leases[l.bucket as usize].expires = Some(expires);
            }
            kept
        };
        self.pass_gate().await;
        Ok(kept)
    }

    async fn acquire(&self, p: Acquire) -> Result<Vec<Lease>> {
        let Acquire { relay, max, ttl } = p;
        self.pass_gate().await;
        let taken = {
            let now = Instant::now();
            let mut s = self.state();
            let mut taken = Vec::new();
            for (bucket, row) in s.leases.iter_mut().enumerate() {
                if taken.len() >= max {
                    break;
                }
                if row.expires.is_none_or(|e| e < now) {
                    row.owner = Some(relay);
                    row.epoch += 1;
                    row.expires = Some(now + ttl);
                    taken.push(Lease {
                        bucket: bucket as i32,
                        epoch: row.epoch,
                    });
                }
            }
            taken
        };
        self.pass_gate().await;
        Ok(taken)
    }

    async fn release(&self, p: Release<'_>) -> Result<()> {
        let Release { relay, leases } = p;
        self.pass_gate().await;
        {
            let mut s = self.state();
            for l in leases {
                if s.holds(relay, l) {
                    let row = &mut s.leases[l.bucket as usize];
                    row.owner = None;
                    row.expires = None;
                }
            }
        }
        self.pass_gate().await;
        Ok(())
    }

    async fn leave(&self, relay: Uuid) -> Result<()> {
        self.pass_gate().await;
        self.state().relays.remove(&relay);
        self.pass_gate().await;
        Ok(())
    }

    async fn claim(&self, p: Claim<'_>) -> Result<ClaimedBatch> {
        let Claim {
            buckets,
            bucket_count,
            now,
            limit,
            exclude,
            max_bytes,
        } = p;
        self.pass_gate().await;
        let got = {
            let mut s = self.state();
            let mut got = Vec::new();
            // As the databases do: the rows that start within the byte
            // budget, and whether a due row was left out for it.
            let (mut cut, mut bytes) = (false, 0i64);
            for p in s.messages.values() {
                if got.len() as i64 >= limit {
                    break;
                }
                let m = &p.message;
                let bucket = bucket_of(m.partition_key.as_deref(), m.seq, bucket_count);
                let due = p.available_at.is_none_or(|at| at <= now);
                let behind_block = s.blocked_before(m.partition_key.as_deref(), m.seq);
                if !due
                    || behind_block
                    || exclude.contains(&m.seq)
                    || buckets.is_some_and(|b| !b.contains(&bucket))
                {
                    continue;
                }
                if bytes >= max_bytes {
                    cut = true;
                    break;
                }
                bytes += m.payload.len() as i64;
                let mut message = m.clone();
                message.attempt = p.attempts + 1;
                got.push(Claimed {
                    message,
                    bucket,
                    undecodable: None,
                });
            }
            if let Some(relay) = self.relay {
                for c in &got {
                    let row = s.leases[c.bucket as usize];
                    s.claimed_under
                        .insert((relay, c.message.seq), (row.owner, row.epoch));
                }
            }
            s.claims.push(ClaimRecord {
                exclude: exclude.to_vec(),
                got: got.iter().map(|c| c.message.seq).collect(),
            });
            ClaimedBatch::new(got, cut, limit)
        };
        self.pass_gate().await;
        Ok(got)
    }

    async fn key_sequences(&self, keys: &[String]) -> Result<HashMap<String, i64>> {
        self.pass_gate().await;
        let found = {
            let s = self.state();
            keys.iter()
                .filter_map(|k| s.key_sequences.get(k).map(|n| (k.clone(), *n)))
                .collect()
        };
        self.pass_gate().await;
        Ok(found)
    }

    async fn fold_key_sequences(&self, _limit: i64) -> Result<u64> {
        let delay = {
            let mut s = self.state();
            s.folds += 1;
            s.fold_delay
        };
        tokio::time::sleep(delay).await;
        Ok(0)
    }

    async fn ack(&self, p: AckBatch<'_>) -> Result<AckReport> {
        let (relay, acks, now) = (p.relay, p.acks, p.now);
        self.pass_gate().await;
        let delay = self.state().ack_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        {
            let mut s = self.state();
            if s.failing_acks > 0 {
                s.failing_acks -= 1;
                return Err(crate::Error::Io(std::io::Error::other(
                    "the connection was lost before the commit",
                )));
            }
        }
        let dead_at = self.now();
        let report = {
            let mut s = self.state();
            let valid: Vec<i32> = p
                .leases
                .iter()
                .filter(|l| s.holds(relay, l))
                .map(|l| l.bucket)
                .collect();
            let plan = AckPlan::new(acks, |b| valid.contains(&b));
            s.check_fencing(relay, acks, |b| valid.contains(&b));
            s.apply(relay, &plan, p.retain, now, dead_at);
            s.acks.push(AckRecord {
                relay,
                now,
                acks: acks.to_vec(),
                report: plan.report.clone(),
            });
            plan.report
        };
        self.pass_gate().await;
        Ok(report)
    }

    async fn purge_published(&self, p: Purge) -> Result<u64> {
        let Purge { before, limit } = p;
        let _call = self.begin_maintenance().await;
        let n = {
            let mut s = self.state();
            s.published.sort_by_key(|(_, at)| *at);
            let n = s
                .published
                .iter()
                .take_while(|(_, at)| *at < before)
                .count()
                .min(usize::try_from(limit).unwrap_or(0));
            s.published.drain(..n);
            n as u64
        };
        self.pass_gate().await;
        Ok(n)
    }

    async fn stats(&self) -> Result<StoreStats> {
        let _call = self.begin_maintenance().await;
        let now = self.now();
        let (delay, fail) = {
            let s = self.state();
            (s.stats_delay, s.stats_fail)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if fail {
            self.state().stats_reads += 1;
            return Err(crate::Error::Database(sqlx::Error::PoolTimedOut));
        }
        let stats = {
            let mut s = self.state();
            s.stats_reads += 1;
            let waiting = |p: &&Pending| p.available_at.is_some_and(|at| at > now);
            let retry_waiting = s.messages.values().filter(waiting).count() as i64;
            let parked = s
                .messages
                .values()
                .filter(|p| !waiting(p))
                .filter(|p| s.blocked_before(p.message.partition_key.as_deref(), p.message.seq))
                .count() as i64;
            let pending = s.messages.len() as i64;
            StoreStats {
                pending,
                ready: pending - retry_waiting - parked,
                retry_waiting,
                parked,
                oldest_pending_age: s
                    .messages
                    .values()
                    .map(|p| p.message.created_at)
                    .min()
                    .map(|t| (now - t).to_std().unwrap_or_default()),
                dead_letters: s.dead_letters.len() as i64,
                dead_tuples: s.dead_tuples,
                oldest_xmin_age: None,
                autovacuum: s.autovacuum,
                last_position: (s.next_seq > 1).then_some(s.next_seq - 1),
                table_bytes: None,
            }
        };
        self.pass_gate().await;
        Ok(stats)
    }

    async fn topic_stats(&self) -> Result<Vec<TopicStats>> {
        let s = self.state();
        let mut topics: std::collections::BTreeMap<String, TopicStats> =
            std::collections::BTreeMap::new();
        for p in s.messages.values() {
            let m = &p.message;
            let t = topics.entry(m.topic.clone()).or_insert_with(|| TopicStats {
                topic: m.topic.clone(),
                pending: 0,
                oldest_created_at: m.created_at,
            });
            t.pending += 1;
            t.oldest_created_at = t.oldest_created_at.min(m.created_at);
        }
        Ok(topics.into_values().collect())
    }

    async fn vacuum(&self) -> Result<()> {
        let _call = self.begin_maintenance().await;
        self.state().vacuums += 1;
        self.pass_gate().await;
        Ok(())
    }

    async fn park(&self, _p: crate::store::Park) -> Result<u64> {
        // Claims here look up each key's block directly: nothing to park,
        // only the call to count.
        let delay = {
            let mut s = self.state();
            s.parks += 1;
            s.park_delay
        };
        tokio::time::sleep(delay).await;
        Ok(0)
    }

    fn local_signal(&self) -> Arc<Notify> {
        self.shared.signal.clone()
    }

    async fn listen(&self) -> Result<Option<Box<dyn WakeSource>>> {
        Ok(None)
    }
}
