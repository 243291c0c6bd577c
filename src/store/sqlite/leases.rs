//! Relay membership and bucket leases: heartbeats, renewing, acquiring and
//! releasing leases, leaving.

use chrono::Utc;
use uuid::Uuid;

use super::decode::{leases_from_rows, micros, micros_after};
use super::SqliteOutbox;
use crate::error::Result;
use crate::store::{Acquire, Heartbeat, Lease, Release, Renew};

pub(super) async fn bucket_count(outbox: &SqliteOutbox) -> Result<i32> {
    Ok(sqlx::query_scalar(&outbox.inner.sql.bucket_count)
        .fetch_one(&outbox.inner.pool)
        .await?)
}

pub(super) async fn heartbeat(outbox: &SqliteOutbox, p: Heartbeat) -> Result<usize> {
    let ttl = p.ttl;
    let now = Utc::now();
    let relay = p.relay.as_bytes().to_vec();
    let mut tx = outbox.inner.pool.begin().await?;
    // Starts with the write.
    sqlx::query(&outbox.inner.sql.heartbeat_up)
        .bind(&relay)
        .bind(micros_after(now, ttl))
        .bind(p.publish_error)
        .execute(&mut *tx)
        .await?;
    let gone = micros(now)
        .saturating_sub(i64::try_from(ttl.saturating_mul(10).as_micros()).unwrap_or(i64::MAX));
    sqlx::query(&outbox.inner.sql.heartbeat_gone)
        .bind(gone)
        .execute(&mut *tx)
        .await?;
    let others: i64 = sqlx::query_scalar(&outbox.inner.sql.heartbeat_count)
        .bind(micros(now))
        .bind(&relay)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((others + 1).max(1) as usize)
}

pub(super) async fn renew(outbox: &SqliteOutbox, p: Renew<'_>) -> Result<Vec<Lease>> {
    let Renew { relay, leases, ttl } = p;
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let expires = micros_after(Utc::now(), ttl);
    let relay = relay.as_bytes().to_vec();
    let mut kept = Vec::with_capacity(leases.len());
    // Each lease is renewed by one atomic statement; there is one
    // bucket, so this is a single statement in practice.
    for l in leases {
        let rows = sqlx::query(&outbox.inner.sql.renew)
            .bind(expires)
            .bind(l.bucket)
            .bind(l.epoch)
            .bind(&relay)
            .fetch_all(&outbox.inner.pool)
            .await?;
        kept.extend(leases_from_rows(&rows)?);
    }
    Ok(kept)
}

pub(super) async fn acquire(outbox: &SqliteOutbox, p: Acquire) -> Result<Vec<Lease>> {
    let Acquire { relay, max, ttl } = p;
    if max == 0 {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    let rows = sqlx::query(&outbox.inner.sql.acquire)
        .bind(relay.as_bytes().to_vec())
        .bind(micros_after(now, ttl))
        .bind(micros(now))
        .bind(micros(now))
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&outbox.inner.pool)
        .await?;
    leases_from_rows(&rows)
}

pub(super) async fn release(outbox: &SqliteOutbox, p: Release<'_>) -> Result<()> {
    let Release { relay, leases } = p;
    let relay = relay.as_bytes().to_vec();
    for l in leases {
        sqlx::query(&outbox.inner.sql.release)
            .bind(l.bucket)
            .bind(l.epoch)
            .bind(&relay)
            .execute(&outbox.inner.pool)
            .await?;
    }
    Ok(())
}

pub(super) async fn leave(outbox: &SqliteOutbox, relay: Uuid) -> Result<()> {
    sqlx::query(&outbox.inner.sql.leave)
        .bind(relay.as_bytes().to_vec())
        .execute(&outbox.inner.pool)
        .await?;
    Ok(())
}
