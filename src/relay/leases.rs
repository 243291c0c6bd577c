//! Leases: this relay's fair share of the buckets, renewed in time, given
//! up when the share shrinks, and watched while a batch is published.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::worker::Worker;
use super::RelayState;
use crate::error::Result;
use crate::store::{Acquire, Heartbeat, Lease, Release, Renew};

/// How many buckets each of `live` relays should hold: a fair share,
/// rounded up so every bucket has an owner.
pub(super) fn lease_target(bucket_count: i32, live: usize) -> usize {
    (bucket_count.max(0) as usize).div_ceil(live.max(1))
}

/// How long lease ticks stay frequent after the last change of the live
/// relays or of this relay's leases, as a share of the lease TTL: longer
/// than the usual cadence (at most a third of it), so a relay that joined
/// others is still looking often when they next look, see it, and give
/// up their extra buckets.
pub(super) const SETTLING: f64 = 0.4;

/// The interval between lease ticks while shares settle: a fortieth of the
/// TTL (250 ms at the default 10 s), so a relay started beside others
/// holds its share within about two of them, where the usual cadence (a
/// quarter to a third of the TTL) took two or three cadences, seconds in
/// which one relay did all the work.
fn settling_tick(ttl: Duration) -> Duration {
    (ttl / 40).max(Duration::from_millis(25))
}

/// The buckets a claim reads: `None` (all of them, the cheaper query) when
/// this relay holds every bucket.
pub(super) fn claim_scope(leases: &[Lease], bucket_count: i32) -> Option<Vec<i32>> {
    if leases.len() as i32 >= bucket_count {
        None
    } else {
        Some(leases.iter().map(|l| l.bucket).collect())
    }
}

impl Worker {
    /// Heartbeat, renewal, and acquiring or releasing buckets until this
    /// relay holds its fair share; true if the live relays or this relay's
    /// leases changed.
    pub(super) async fn manage_leases(&mut self) -> Result<bool> {
        let relay = self.config.relay_id;
        let ttl = self.config.lease_ttl;
        // Deadlines count from before the request: the database's expiry is
        // later than ours, so we stop publishing before anyone can take
        // over.
        let started = Instant::now();
        let publish_error = match self.health.state {
            RelayState::PublishFailing => self.health.last_error.clone(),
            _ => None,
        };
        let beat = Heartbeat {
            relay,
            ttl,
            publish_error,
        };
        let live = self.store.heartbeat(beat).await?;
        let renew = Renew {
            relay,
            leases: &self.leases,
            ttl,
        };
        let mut leases = self.store.renew(renew).await?;
        if leases.len() < self.leases.len() {
            tracing::info!(
                relay = %relay,
                lost = self.leases.len() - leases.len(),
                "outbox relay: leases taken over by another relay"
            );
        }
        let target = lease_target(self.bucket_count, live);
        if leases.len() < target {
            let max = target - leases.len();
            let more = self.store.acquire(Acquire { relay, max, ttl }).await?;
            leases.extend(more);
        } else if leases.len() > target {
            leases.sort_by_key(|l| l.bucket);
            let extra = leases.split_off(target);
            let release = Release {
                relay,
                leases: &extra,
            };
            self.store.release(release).await?;
        }
        leases.sort_by_key(|l| l.bucket);
        if leases != self.leases {
            // Claimed under other leases: its buckets may have changed hands.
            self.prefetch = None;
        }
        let changed = leases != self.leases || live != self.last_live;
        if changed {
            // Relays came or went, or buckets moved: the others' shares
            // move too (a relay started beside one that holds every bucket
            // waits for its release), so look again soon rather than a
            // quarter of the TTL from now. A look that finds nothing
            // moved makes no claim (see the worker's loop).
            self.settle_until = started + ttl.mul_f64(SETTLING);
        }
        self.last_live = live;
        self.leases = leases;
        self.renewed_at(started);
        self.publish_health();
        Ok(changed)
    }

    /// A renewal of the leases while the publisher works, so a slow
    /// destination does not cost the relay its keys. It owns what it needs,
    /// so it runs beside the publisher call and a renewal that hangs never
    /// keeps the relay from seeing the call end or its deadline pass.
    /// Resolves with the instant it was asked at and the leases kept.
    pub(super) fn renewal(
        &self,
    ) -> impl Future<Output = (Instant, Result<Vec<Lease>>)> + Send + 'static {
        let store = self.store.clone();
        let leases = self.leases.clone();
        let (relay, ttl) = (self.config.relay_id, self.config.lease_ttl);
        let ack_landed = self.pending_ack.as_ref().map(|p| p.landed());
        async move {
            // Asked now: the deadline counts from here, however long the
            // acknowledgement in flight takes to land first.
            let started = Instant::now();
            if let Some(landed) = ack_landed {
                landed.await;
            }
            let renew = Renew {
                relay,
                leases: &leases,
                ttl,
            };
            (started, store.renew(renew).await)
        }
    }

    /// Takes in a renewal made while publishing. Buckets found taken are
    /// dropped from `self.leases`, which stops the batch's later waves for
    /// them.
    /// Takes in a renewal made beside the loop (during a publisher call,
    /// or while queued for a group's turn): the leases it kept and their
    /// new deadline, or its error, which leaves the leases as they were.
    pub(super) fn take_renewal(
        &mut self,
        started: Instant,
        kept: Result<Vec<Lease>>,
    ) -> Result<()> {
        let kept = kept?;
        if kept.len() < self.leases.len() {
            self.prefetch = None;
            tracing::warn!(
                relay = %self.config.relay_id,
                "outbox relay: leases lost during a renewal"
            );
        }
        self.leases = kept;
        self.renewed_at(started);
        Ok(())
    }

    pub(super) fn renewed_at(&mut self, started: Instant) {
        let ttl = self.config.lease_ttl;
        self.lease_deadline = started + ttl.mul_f64(0.8);
        // Between a quarter and a third of the TTL, at random: relays
        // started together (a group's members) drift apart instead of
        // renewing at the same moments.
        self.next_lease_tick = started + ttl.mul_f64(0.25 + fastrand::f64() / 12.0);
        if started < self.settle_until {
            self.next_lease_tick = self.next_lease_tick.min(started + settling_tick(ttl));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_has_an_owner_when_shares_do_not_divide() {
        assert_eq!(lease_target(16, 1), 16);
        assert_eq!(lease_target(16, 3), 6);
        assert_eq!(lease_target(16, 16), 1);
        assert_eq!(lease_target(16, 40), 1);
        // A heartbeat that counted nobody still leaves this relay a share.
        assert_eq!(lease_target(16, 0), 16);
        for live in 1..=20 {
            assert!(lease_target(16, live) * live >= 16, "{live} relays");
        }
    }

    #[test]
    fn a_relay_holding_every_bucket_claims_without_a_bucket_filter() {
        let leases: Vec<Lease> = (0..4).map(|bucket| Lease { bucket, epoch: 1 }).collect();
        assert_eq!(claim_scope(&leases, 4), None);
        assert_eq!(claim_scope(&leases[1..3], 4), Some(vec![1, 2]));
    }
}
