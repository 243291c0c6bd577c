//! The operations the relay runs on PostgreSQL: leases, claims, key
//! sequences and maintenance. Acknowledgements are in `ack.rs`, the wake
//! source in `wake.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Executor;
use tokio::sync::Notify;
use uuid::Uuid;

use super::claims::InFlight;
use super::decode::{claimed_batch, leases_from_rows};
use super::{begin, PgOutbox};
use crate::error::Result;
use crate::store::sealed::StoreOps;
use crate::store::{
    AckBatch, AckReport, Acquire, Claim, ClaimedBatch, Heartbeat, Lease, Park, Purge, Release,
    Renew, Store, StoreStats, WakeSource,
};

impl Store for PgOutbox {}

#[async_trait]
impl StoreOps for PgOutbox {
    async fn check_schema(&self) -> Result<()> {
        self.check_schema_is_known().await
    }

    async fn bucket_count(&self) -> Result<i32> {
        let q = sqlx::query_scalar(&self.inner.sql.bucket_count);
        self.on_relay().one(q).await
    }

    async fn heartbeat(&self, p: Heartbeat) -> Result<usize> {
        let Heartbeat {
            relay,
            ttl,
            publish_error,
        } = p;
        let q = sqlx::query_scalar(&self.inner.sql.heartbeat)
            .bind(relay)
            .bind(secs(ttl))
            .bind(publish_error);
        let n: i64 = self.on_relay().one(q).await?;
        Ok(n.max(1) as usize)
    }

    async fn renew(&self, p: Renew<'_>) -> Result<Vec<Lease>> {
        let Renew { relay, leases, ttl } = p;
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let (b, e) = lease_arrays(leases);
        let q = sqlx::query(&self.inner.sql.renew)
            .bind(relay)
            .bind(secs(ttl))
            .bind(b)
            .bind(e);
        leases_from_rows(&self.on_relay().rows(q).await?)
    }

    async fn acquire(&self, p: Acquire) -> Result<Vec<Lease>> {
        let Acquire { relay, max, ttl } = p;
        if max == 0 {
            return Ok(Vec::new());
        }
        let q = sqlx::query(&self.inner.sql.acquire)
            .bind(relay)
            .bind(secs(ttl))
            .bind(max as i64);
        leases_from_rows(&self.on_relay().rows(q).await?)
    }

    async fn release(&self, p: Release<'_>) -> Result<()> {
        let Release { relay, leases } = p;
        if leases.is_empty() {
            return Ok(());
        }
        let (b, e) = lease_arrays(leases);
        let q = sqlx::query(&self.inner.sql.release)
            .bind(relay)
            .bind(b)
            .bind(e);
        self.on_relay().execute(q).await.map(drop)
    }

    async fn leave(&self, relay: Uuid) -> Result<()> {
        let q = sqlx::query(&self.inner.sql.leave).bind(relay);
        self.on_relay().execute(q).await.map(drop)
    }

    async fn claim(&self, p: Claim<'_>) -> Result<ClaimedBatch> {
        let by_bucket = self.inner.bucket_claims.statement(
            &self.inner.sql.claim_buckets,
            p.bucket_count,
            p.buckets,
        );
        let (q, joins) = match by_bucket {
            Some(sql) => (
                sqlx::query(sql)
                    .bind(p.now)
                    .bind(p.limit)
                    .bind(p.exclude)
                    .bind(p.buckets)
                    .bind(p.max_bytes),
                true,
            ),
            None => {
                let in_flight = InFlight::of(p.exclude);
                (
                    sqlx::query(&self.inner.sql.claim)
                        .bind(p.now)
                        .bind(p.bucket_count)
                        .bind(p.limit)
                        .bind(in_flight.first)
                        .bind(p.buckets)
                        .bind(p.max_bytes)
                        .bind(in_flight.gap_firsts)
                        .bind(in_flight.gap_lasts)
                        .bind(in_flight.last),
                    false,
                )
            }
        };
        // The claim reads the messages table in position order through its
        // primary key, and must keep doing so when the table's statistics
        // mislead the planner: after a large backlog drains, the table
        // keeps its size with a few live rows, and the planner then prefers
        // a sequential scan and a sort (measured: 20-40 ms per claim on a
        // 250 MB table, against 0.3 ms through the index), a parallel plan,
        // or a bitmap scan (which reads every ready row and sorts them).
        // The claim by bucket leaves out the positions in flight with a
        // merge anti join (the array sorted once, the scan keeps its
        // order): the plan PostgreSQL caches for the statement after a few
        // runs guesses ten positions, and a nested loop over the array for
        // every row read (measured: 170 ms for a claim beside 1,000
        // positions in flight, against 3 ms merged). `claim.sql` reads
        // around them instead, its gaps through a nested loop. The settings
        // that forbid all that last only for the claim's own transaction
        // (sent with its BEGIN, in one round trip), so nothing outlives it
        // on a pooled connection, and no start-up parameter a pooler would
        // refuse is needed. The sweep of gone blocks, once a second,
        // probes by index through a nested loop: it runs first, and the
        // join settings follow it.
        let mut tx = if self.inner.sweep.due() {
            let mut tx = begin(self.relay_pool(), Some(CLAIM_BEGIN)).await?;
            sqlx::query(&self.inner.sql.sweep_gone_blocks)
                .persistent(self.named())
                .execute(&mut *tx)
                .await?;
            let settings = if joins { CLAIM_JOINS } else { CLAIM_SCANS };
            sqlx::Executor::execute(&mut *tx, settings).await?;
            tx
        } else if joins {
            begin(self.relay_pool(), Some(CLAIM_BEGIN_JOINS)).await?
        } else {
            begin(self.relay_pool(), Some(CLAIM_BEGIN_SCANS)).await?
        };
        let rows = q.persistent(self.named()).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        claimed_batch(&rows, p.limit)
    }

    async fn park(&self, p: Park) -> Result<u64> {
        // Planner settings for these transactions alone (park.sql says
        // why). Waking and unparking commit on their own, so a parking
        // that fails cannot hold them back; and each in a transaction of
        // its own, as the last statement there: one that lowers the claims'
        // low-water mark holds its row to the commit, and must not then
        // wait for messages an acknowledgement holds while it waits for
        // that row (an acknowledgement lowers it too, in unpark.sql).
        if let Some(wake_by) = p.wake_by {
            // One look first, in no transaction; each step below runs only
            // if it has something to do. What the look misses by a moment
            // waits for the next pass, a second later: a retry just put to
            // sleep, a key just blocked (the claims hold its messages back
            // meanwhile).
            let q = sqlx::query_as::<_, Probe>(&self.inner.sql.upkeep_probe)
                .bind(wake_by)
                .bind(&self.inner.names.messages);
            let (due, parked, blocked, last, floor) = self
                .on_relay()
                .all(q)
                .await?
                .pop()
                .ok_or(crate::Error::Database(sqlx::Error::RowNotFound))?;
            if due {
                let mut tx = begin(self.relay_pool(), Some(PARK_BEGIN)).await?;
                sqlx::query(&self.inner.sql.wake_sleeping)
                    .persistent(self.named())
                    .bind(wake_by)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            if parked {
                let mut tx = begin(self.relay_pool(), Some(PARK_BEGIN)).await?;
                sqlx::query(&self.inner.sql.unpark_lifted)
                    .persistent(self.named())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            // Once a pass, after the wake-ups that lower it.
            self.advance_floor(last, floor).await;
            if !blocked {
                return Ok(0);
            }
        }
        let mut tx = begin(self.relay_pool(), Some(PARK_BEGIN)).await?;
        let parked = sqlx::query(&self.inner.sql.park)
            .persistent(self.named())
            .bind(p.limit)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(parked)
    }

    async fn ack(&self, p: AckBatch<'_>) -> Result<AckReport> {
        self.apply_acks(p).await
    }

    async fn key_sequences(&self, keys: &[String]) -> Result<HashMap<String, i64>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let mut c = self.relay_conn().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(&self.inner.sql.key_seq_read)
            .persistent(self.named())
            .bind(keys)
            .fetch_all(c.conn())
            .await?;
        c.finish().await?;
        Ok(rows.into_iter().collect())
    }

    async fn fold_key_sequences(&self, limit: i64) -> Result<u64> {
        let mut c = self.relay_conn().await?;
        let folded: i64 = sqlx::query_scalar(&self.inner.sql.key_seq_fold)
            .persistent(self.named())
            .bind(limit)
            .fetch_one(c.conn())
            .await?;
        c.finish().await?;
        Ok(folded as u64)
    }

    async fn purge_published(&self, p: Purge) -> Result<u64> {
        let q = sqlx::query(&self.inner.sql.purge)
            .bind(p.before)
            .bind(p.limit);
        self.on_relay().execute(q).await
    }

    async fn stats(&self) -> Result<StoreStats> {
        Ok(self.figures_on(self.on_relay()).await?.0)
    }

    async fn topic_stats(&self) -> Result<Vec<crate::store::TopicStats>> {
        self.topics_on(self.on_relay()).await
    }

    async fn figures(&self) -> Result<(StoreStats, Vec<crate::store::TopicStats>)> {
        self.figures_on(self.on_relay()).await
    }

    async fn vacuum(&self) -> Result<()> {
        // Not in a transaction (VACUUM refuses one), and a simple query (one
        // protocol message, so a pooler in transaction mode keeps it on one
        // server connection); SKIP_LOCKED so it never waits behind a lock.
        self.relay_pool()
            .execute(self.inner.sql.vacuum.as_str())
            .await?;
        Ok(())
    }

    fn local_signal(&self) -> Arc<Notify> {
        self.inner.wake.signal.clone()
    }

    async fn listen(&self) -> Result<Option<Box<dyn WakeSource>>> {
        self.listen_source().await
    }
}

/// Opens a claim's transaction with the planner settings its scan needs,
/// and the plan PostgreSQL caches for the statement from the first run: a
/// claim by bucket with many scans took 5 to 9 ms to plan afresh, and
/// with 63 scans PostgreSQL kept planning it afresh on every run.
const CLAIM_BEGIN: &str = "BEGIN; SET LOCAL enable_seqscan = off; \
     SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off; \
     SET LOCAL plan_cache_mode = force_generic_plan";

/// The join settings of the claim by bucket (`claim_buckets.sql`): the
/// positions in flight merged, never looped over nor hashed (a hash join
/// would lose the scan's order); and no bitmap scan, which would read
/// every ready row and sort them.
const CLAIM_JOINS: &str = "SET LOCAL enable_nestloop = off; SET LOCAL enable_hashjoin = off; \
     SET LOCAL enable_bitmapscan = off";

/// The settings of `claim.sql`, which joins nothing but its gaps between
/// positions in flight (a nested loop): no bitmap scan.
const CLAIM_SCANS: &str = "SET LOCAL enable_bitmapscan = off";

/// [`CLAIM_BEGIN`] and [`CLAIM_SCANS`] in one round trip.
const CLAIM_BEGIN_SCANS: &str = "BEGIN; SET LOCAL enable_seqscan = off; \
     SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off; \
     SET LOCAL plan_cache_mode = force_generic_plan; \
     SET LOCAL enable_bitmapscan = off";

/// [`CLAIM_BEGIN`] and [`CLAIM_JOINS`] in one round trip.
pub(super) const CLAIM_BEGIN_JOINS: &str = "BEGIN; SET LOCAL enable_seqscan = off; \
     SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off; \
     SET LOCAL plan_cache_mode = force_generic_plan; \
     SET LOCAL enable_nestloop = off; \
     SET LOCAL enable_hashjoin = off; SET LOCAL enable_bitmapscan = off";

/// What `upkeep_probe.sql` finds: sleeping messages due, a message parked,
/// a key blocked, the sequence's last position and the low-water mark.
type Probe = (bool, bool, bool, Option<i64>, Option<i64>);

/// Opens a parking transaction with the planner settings it needs.
const PARK_BEGIN: &str = "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL jit = off; \
     SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; \
     SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// A time to live as the seconds `make_interval` takes.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Leases as the two arrays the lease statements unnest.
pub(super) fn lease_arrays(leases: &[Lease]) -> (Vec<i32>, Vec<i64>) {
    leases.iter().map(|l| (l.bucket, l.epoch)).unzip()
}
