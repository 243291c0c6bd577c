//! Short forms of the backend operations for the stores' unit tests: the
//! common parameters filled in, errors unwrapped.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::sealed::StoreOps;
use super::{Ack, AckBatch, AckReport, Acquire, Claim, Claimed, Heartbeat, Lease, Release, Renew};

/// [`StoreOps`] with the parameters a test rarely varies filled in.
#[async_trait]
pub(crate) trait Shorthand: StoreOps {
    /// Records `relay` alive for `ttl`; the live relays.
    async fn beat(&self, relay: Uuid, ttl: Duration) -> usize {
        let beat = Heartbeat {
            relay,
            ttl,
            publish_error: None,
        };
        self.heartbeat(beat).await.unwrap()
    }

    /// Takes up to `max` buckets for `ttl`.
    async fn take(&self, relay: Uuid, max: usize, ttl: Duration) -> Vec<Lease> {
        self.acquire(Acquire { relay, max, ttl }).await.unwrap()
    }

    /// Extends `leases` by `ttl`; those still held.
    async fn extend(&self, relay: Uuid, leases: &[Lease], ttl: Duration) -> Vec<Lease> {
        self.renew(Renew { relay, leases, ttl }).await.unwrap()
    }

    /// Gives `leases` back.
    async fn give_back(&self, relay: Uuid, leases: &[Lease]) {
        self.release(Release { relay, leases }).await.unwrap()
    }

    /// Claims up to `limit` messages due now in `buckets` (all if `None`),
    /// leaving out `exclude`.
    async fn claim_now(
        &self,
        buckets: Option<&[i32]>,
        limit: i64,
        exclude: &[i64],
    ) -> Vec<Claimed> {
        self.claim_due(Utc::now(), buckets, limit, exclude).await
    }

    /// Claims every message due at `now` (up to 1,000), in position order.
    async fn claim_at(&self, now: DateTime<Utc>) -> Vec<Claimed> {
        self.claim_due(now, None, 1000, &[]).await
    }

    /// Claims up to `limit` messages due at `now`, without a byte budget.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        buckets: Option<&[i32]>,
        limit: i64,
        exclude: &[i64],
    ) -> Vec<Claimed> {
        let bucket_count = self.bucket_count().await.unwrap();
        let claim = Claim {
            buckets,
            bucket_count,
            now,
            limit,
            exclude,
            max_bytes: i64::MAX,
        };
        self.claim(claim).await.unwrap().messages
    }

    /// Acknowledges `acks` under `leases`, deleting what was published.
    async fn ack_as(&self, relay: Uuid, leases: &[Lease], acks: &[Ack]) -> AckReport {
        self.ack_at(relay, leases, acks, false, Utc::now()).await
    }

    /// Acknowledges `acks` under `leases` at `now`, keeping what was
    /// published if `retain`.
    async fn ack_at(
        &self,
        relay: Uuid,
        leases: &[Lease],
        acks: &[Ack],
        retain: bool,
        now: DateTime<Utc>,
    ) -> AckReport {
        self.ack(AckBatch {
            relay,
            leases,
            acks,
            retain,
            now,
        })
        .await
        .unwrap()
    }

    /// The upkeep's parking as at `now`: wakes what is due by then and a
    /// little more, parks up to `limit`; how many it parked.
    async fn park_at(&self, now: DateTime<Utc>, limit: i64) -> u64 {
        let wake_by = Some(super::sleep_horizon(now));
        self.park(super::Park { wake_by, limit }).await.unwrap()
    }
}

impl<T: StoreOps + ?Sized> Shorthand for T {}
