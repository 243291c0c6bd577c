//! Relay membership and bucket leases: heartbeats, renewing, acquiring and
//! releasing leases, leaving. Lease times are the database's, so relays
//! on several hosts agree on them.

use std::time::Duration;

use uuid::Uuid;

use super::decode::leases_from_rows;
use super::statements::{with_list, with_pairs};
use super::{begin_read_committed, execute_read_committed, MySqlOutbox};
use crate::error::Result;
use crate::store::{Acquire, Heartbeat, Lease, Release, Renew};

/// A duration in microseconds, as `INTERVAL ? MICROSECOND` takes it.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub(super) async fn bucket_count(outbox: &MySqlOutbox) -> Result<i32> {
    let n: i64 = sqlx::query_scalar(&outbox.inner.sql.bucket_count)
        .fetch_one(outbox.relay_pool())
        .await?;
    Ok(i32::try_from(n).unwrap_or(i32::MAX))
}

pub(super) async fn heartbeat(outbox: &MySqlOutbox, p: Heartbeat) -> Result<usize> {
    let ttl = p.ttl;
    let relay = p.relay.as_bytes().to_vec();
    let sql = &outbox.inner.sql;
    let pool = outbox.relay_pool();
    execute_read_committed(
        pool,
        sqlx::query(&sql.heartbeat_up)
            .bind(&relay)
            .bind(micros(ttl))
            .bind(p.publish_error),
    )
    .await?;
    execute_read_committed(
        pool,
        sqlx::query(&sql.heartbeat_gone).bind(micros(ttl.saturating_mul(9))),
    )
    .await?;
    let others: i64 = sqlx::query_scalar(&sql.heartbeat_count)
        .bind(&relay)
        .fetch_one(pool)
        .await?;
    Ok((others + 1).max(1) as usize)
}

pub(super) async fn renew(outbox: &MySqlOutbox, p: Renew<'_>) -> Result<Vec<Lease>> {
    let Renew { relay, leases, ttl } = p;
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let relay = relay.as_bytes().to_vec();
    let sql = &outbox.inner.sql;
    let mut tx = begin_read_committed(outbox.relay_pool()).await?;
    let text = with_pairs(&sql.renew, leases.len());
    let mut q = sqlx::query(&text).bind(micros(ttl));
    for l in leases {
        q = q.bind(l.bucket).bind(l.epoch);
    }
    q.bind(&relay).persistent(false).execute(&mut *tx).await?;
    let text = with_pairs(&sql.renewed, leases.len());
    let mut q = sqlx::query(&text);
    for l in leases {
        q = q.bind(l.bucket).bind(l.epoch);
    }
    let rows = q.bind(&relay).persistent(false).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    leases_from_rows(&rows)
}

pub(super) async fn acquire(outbox: &MySqlOutbox, p: Acquire) -> Result<Vec<Lease>> {
    let Acquire { relay, max, ttl } = p;
    if max == 0 {
        return Ok(Vec::new());
    }
    let sql = &outbox.inner.sql;
    let mut tx = begin_read_committed(outbox.relay_pool()).await?;
    let free: Vec<i32> = sqlx::query_scalar(&sql.acquire_free)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
    if free.is_empty() {
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    let text = with_list(&sql.acquire, free.len());
    let mut q = sqlx::query(&text)
        .bind(relay.as_bytes().to_vec())
        .bind(micros(ttl));
    for b in &free {
        q = q.bind(*b);
    }
    q.persistent(false).execute(&mut *tx).await?;
    let text = with_list(&sql.acquired, free.len());
    let mut q = sqlx::query(&text);
    for b in &free {
        q = q.bind(*b);
    }
    let rows = q.persistent(false).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    leases_from_rows(&rows)
}

pub(super) async fn release(outbox: &MySqlOutbox, p: Release<'_>) -> Result<()> {
    let Release { relay, leases } = p;
    let relay = relay.as_bytes().to_vec();
    for l in leases {
        execute_read_committed(
            outbox.relay_pool(),
            sqlx::query(&outbox.inner.sql.release)
                .bind(l.bucket)
                .bind(l.epoch)
                .bind(&relay),
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn leave(outbox: &MySqlOutbox, relay: Uuid) -> Result<()> {
    execute_read_committed(
        outbox.relay_pool(),
        sqlx::query(&outbox.inner.sql.leave).bind(relay.as_bytes().to_vec()),
    )
    .await?;
    Ok(())
}
