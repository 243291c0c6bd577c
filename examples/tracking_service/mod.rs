//! The candidate-tracking service of the broker examples: its table, the
//! event it announces and the transaction that records both.

use std::borrow::Cow;
use std::time::Duration;

use outbox::{Event, SqliteOutbox};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

use crate::demo_db::DemoDb;

/// The event other services care about.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CandidateStatusChanged {
    pub(crate) candidate_id: i64,
    pub(crate) name: String,
    pub(crate) from: String,
    pub(crate) to: String,
}

impl Event for CandidateStatusChanged {
    const EVENT_TYPE: &'static str = "CandidateStatusChanged";

    fn topic(&self) -> Cow<'_, str> {
        "candidates".into()
    }

    // Events of one candidate are published in the order they committed.
    fn partition_key(&self) -> Option<String> {
        Some(format!("candidate-{}", self.candidate_id))
    }
}

/// The service's database for one run of an example (see [`DemoDb`]): its
/// table with two candidates, ids 1 and 2, and the outbox's tables beside
/// it.
pub(crate) async fn service_database(
    run: &str,
    names: [&str; 2],
) -> Result<(DemoDb, SqliteOutbox), Box<dyn std::error::Error + Send + Sync>> {
    let db = DemoDb::create(run).await?;
    create_candidates(&db.pool, names).await?;
    let outbox = SqliteOutbox::new(db.pool.clone());
    outbox.migrate().await?;
    Ok((db, outbox))
}

/// Creates the service's own table with two candidates, ids 1 and 2.
async fn create_candidates(pool: &SqlitePool, names: [&str; 2]) -> sqlx::Result<()> {
    sqlx::query("CREATE TABLE candidates (id INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL)")
        .execute(pool)
        .await?;
    sqlx::query("INSERT INTO candidates VALUES (1, ?, 'applied'), (2, ?, 'interviewing')")
        .bind(names[0])
        .bind(names[1])
        .execute(pool)
        .await?;
    Ok(())
}

/// Changes a candidate's status and records the event, in one transaction.
pub(crate) async fn change_status(
    pool: &SqlitePool,
    outbox: &SqliteOutbox,
    candidate_id: i64,
    to: &str,
) -> outbox::Result<()> {
    // IMMEDIATE: the transaction reads before it writes; started deferred,
    // it could fail with SQLITE_BUSY when the relay writes in between.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let (name, from): (String, String) =
        sqlx::query_as("SELECT name, status FROM candidates WHERE id = ?")
            .bind(candidate_id)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query("UPDATE candidates SET status = ? WHERE id = ?")
        .bind(to)
        .bind(candidate_id)
        .execute(&mut *tx)
        .await?;
    let event = CandidateStatusChanged {
        candidate_id,
        name: name.clone(),
        from: from.clone(),
        to: to.to_owned(),
    };
    let id = outbox.publish_event(&mut *tx, &event).await?.id();
    outbox.commit(tx).await?;
    println!("[tracking] {name}: {from} -> {to} (event {id})");
    Ok(())
}

/// Moves both candidates on twice: four events, two per partition key.
pub(crate) async fn record_four_changes(
    pool: &SqlitePool,
    outbox: &SqliteOutbox,
) -> outbox::Result<()> {
    change_status(pool, outbox, 1, "interviewing").await?;
    change_status(pool, outbox, 2, "offer").await?;
    change_status(pool, outbox, 1, "offer").await?;
    change_status(pool, outbox, 2, "hired").await
}

/// Waits until the relay has published everything committed, or fails
/// after 30 s naming the broker that is likely down.
pub(crate) async fn wait_until_published(
    outbox: &SqliteOutbox,
    broker: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while outbox.pending_count().await? > 0 {
        if tokio::time::Instant::now() > deadline {
            return Err(
                format!("the relay did not publish within 30 s; is {broker} running?").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
