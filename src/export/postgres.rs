//! The change log on PostgreSQL.

use sqlx::postgres::PgConnection;
use sqlx::{Executor, Postgres, Row};

use super::{coalesce, ChangePage, Cursor, CursorState};
use crate::change::{Change, ChangeKind};
use crate::error::{Error, Result};
use crate::message::Enqueued;
use crate::store::postgres::change_lock_class;
use crate::PgOutbox;

fn json_text(v: Option<&serde_json::Value>) -> Option<String> {
    v.map(|v| v.to_string())
}

fn parse_json(s: Option<String>) -> Result<Option<serde_json::Value>> {
    s.map(|s| serde_json::from_str(&s).map_err(Error::Serialize))
        .transpose()
}

impl PgOutbox {
    /// Records a change in the change log, with the caller's executor
    /// (normally `&mut *tx`, the transaction that made the change).
    ///
    /// Takes the entity's transaction-scoped lock, so changes of one entity
    /// are logged in commit order.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMessage`](crate::Error::InvalidMessage) if the change holds what the
    /// database would refuse (empty or oversized names, NUL in text or JSON), checked before
    /// anything is sent so the caller's transaction stays usable;
    /// [`Error::Database`](crate::Error::Database) if the database fails (the caller's
    /// transaction is then aborted).
    pub async fn log_change<'c, E>(&self, executor: E, change: &Change) -> Result<()>
    where
        E: Executor<'c, Database = Postgres>,
    {
        change.validate()?;
        let sql = self.names().render(
            "WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock($6, hashtext($7))) \
             INSERT INTO {changes} (entity_type, entity_key, kind, data, before) \
             SELECT $1, $2, $3, $4::jsonb, $5::jsonb FROM l",
        );
        sqlx::query(&sql)
            .persistent(self.named())
            .bind(change.entity_type())
            .bind(change.key())
            .bind(change.kind().as_str())
            .bind(json_text(change.data()))
            .bind(json_text(change.before()))
            .bind(change_lock_class(self.names()))
            .bind(change.partition_key())
            .execute(executor)
            .await?;
        Ok(())
    }

    /// Records a change in the change log and enqueues it as a message to
    /// `topic` (see [`Change::to_message`]), both in the caller's
    /// transaction.
    ///
    /// Unlike [`log_change`](Self::log_change) it takes a connection, not
    /// any executor: its two statements must run on the same connection
    /// (a pool would run them on two, outside one transaction). Pass
    /// `&mut *tx`.
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue) and [`log_change`](Self::log_change): both are checked
    /// before the first statement is sent; [`Error::Database`](crate::Error::Database) if the
    /// database fails.
    pub async fn record_change(
        &self,
        conn: &mut PgConnection,
        topic: &str,
        change: &Change,
    ) -> Result<Enqueued> {
        // Both writes are checked before the first is sent.
        change.validate()?;
        let enqueued = self.enqueue(&mut *conn, change.to_message(topic)?).await?;
        self.log_change(&mut *conn, change).await?;
        Ok(enqueued)
    }

    /// The cursor that continues exactly after what the caller's
    /// transaction sees. Run the snapshot query and this call in one
    /// `REPEATABLE READ` transaction: the changes after the cursor are
    /// exactly those the snapshot does not contain.
    ///
    /// ```no_run
    /// # async fn demo(outbox: outbox::PgOutbox, pool: sqlx::PgPool) -> outbox::Result<()> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
    /// let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, status FROM candidates")
    ///     .fetch_all(&mut *tx)
    ///     .await?;
    /// let cursor = outbox.snapshot_cursor(&mut *tx).await?;
    /// tx.commit().await?;
    /// // ... load `rows` into the replica, then:
    /// outbox.commit_cursor("crm", &cursor).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) if the database fails.
    pub async fn snapshot_cursor<'c, E>(&self, executor: E) -> Result<Cursor>
    where
        E: Executor<'c, Database = Postgres>,
    {
        let snap: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .persistent(self.named())
            .fetch_one(executor)
            .await?;
        Ok(Cursor(CursorState::Pg {
            done: Some(snap),
            reading: None,
            last: 0,
        }))
    }

    /// The cursor stored for `consumer`, if it ever committed one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCursor`](crate::Error::InvalidCursor) if the stored cursor cannot be
    /// read; [`Error::Database`](crate::Error::Database) if the database fails.
    pub async fn cursor(&self, consumer: &str) -> Result<Option<Cursor>> {
        let mut c = self.standalone().await?;
        let s: Option<String> = sqlx::query_scalar(
            &self
                .names()
                .render("SELECT cursor FROM {export_cursors} WHERE consumer = $1"),
        )
        .persistent(self.named())
        .bind(consumer)
        .fetch_optional(c.conn())
        .await?;
        c.finish().await?;
        s.map(|s| s.parse()).transpose()
    }

    /// Stores `consumer`'s cursor: call after applying a page. Writes in its
    /// own statement.
    ///
    /// # Errors
    ///
    /// [`Error::CursorBackendMismatch`](crate::Error::CursorBackendMismatch) for a cursor of
    /// another backend; [`Error::Database`](crate::Error::Database) if the database fails.
    pub async fn commit_cursor(&self, consumer: &str, cursor: &Cursor) -> Result<()> {
        let mut c = self.standalone().await?;
        self.commit_cursor_with(c.conn(), consumer, cursor).await?;
        c.finish().await
    }

    /// Stores `consumer`'s cursor with the caller's executor: a consumer
    /// whose replica lives in this database commits the cursor in the
    /// transaction that applied the page, and never re-reads a page.
    ///
    /// # Errors
    ///
    /// [`Error::CursorBackendMismatch`](crate::Error::CursorBackendMismatch) for a cursor of
    /// another backend; [`Error::Database`](crate::Error::Database) if the database fails.
    pub async fn commit_cursor_with<'c, E>(
        &self,
        executor: E,
        consumer: &str,
        cursor: &Cursor,
    ) -> Result<()>
    where
        E: Executor<'c, Database = Postgres>,
    {
        if matches!(cursor.0, CursorState::Sqlite { .. }) {
            return Err(Error::CursorBackendMismatch(cursor.to_string()));
        }
        sqlx::query(&self.names().render(
            "INSERT INTO {export_cursors} (consumer, cursor) VALUES ($1, $2) \
             ON CONFLICT (consumer) DO UPDATE SET cursor = excluded.cursor, updated_at = now()",
        ))
        .persistent(self.named())
        .bind(consumer)
        .bind(cursor.to_string())
        .execute(executor)
        .await?;
        Ok(())
    }

    /// The next page after `consumer`'s stored cursor (the start of the log
    /// for a new consumer), at most `limit` logged changes before
    /// coalescing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a `limit` below 1;
    /// [`Error::InvalidCursor`](crate::Error::InvalidCursor) if the stored cursor cannot be
    /// read; [`Error::Database`](crate::Error::Database) if the database fails.
    pub async fn changes_since(&self, consumer: &str, limit: i64) -> Result<ChangePage> {
        let cursor = self
            .cursor(consumer)
            .await?
            .unwrap_or_else(Cursor::beginning);
        self.changes_after(&cursor, limit).await
    }

    /// The next page after `cursor`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a `limit` below 1;
    /// [`Error::CursorBackendMismatch`](crate::Error::CursorBackendMismatch) for a cursor of
    /// another backend; [`Error::InvalidMessage`](crate::Error::InvalidMessage) for a change
    /// log row of an unknown kind; [`Error::Database`](crate::Error::Database) if the database
    /// fails.
    pub async fn changes_after(&self, cursor: &Cursor, limit: i64) -> Result<ChangePage> {
        if limit <= 0 {
            return Err(Error::InvalidConfig {
                field: "limit",
                reason: "must be at least 1".to_owned(),
            });
        }
        let start = CursorState::Pg {
            done: None,
            reading: None,
            last: 0,
        };
        let state = match &cursor.0 {
            CursorState::Start => &start,
            other => other,
        };
        let CursorState::Pg {
            done,
            reading,
            last,
        } = state
        else {
            return Err(Error::CursorBackendMismatch(cursor.to_string()));
        };
        // A generation opened by this very call is as of now: a page that
        // reads it to its end is caught up. One opened earlier may miss
        // changes committed since.
        let fresh = reading.is_none();
        let mut c = self.standalone().await?;
        // A new generation: everything committed as of now and not as of
        // `done`.
        let (reading, last) = match reading {
            Some(r) => (r.clone(), *last),
            None => {
                // Where the generation starts, found once through the txid
                // index, so that its pages walk positions from there.
                let (snap, first): (String, Option<i64>) = sqlx::query_as(&self.names().render(
                    "WITH s AS (SELECT pg_current_snapshot() AS cur) \
                     SELECT s.cur::text, (SELECT min(seq) FROM {changes} \
                       WHERE txid >= coalesce(pg_snapshot_xmin($1::text::pg_snapshot), '0'::xid8) \
                         AND txid < pg_snapshot_xmax(s.cur) \
                         AND pg_visible_in_snapshot(txid, s.cur) \
                         AND ($1::text IS NULL \
                              OR NOT pg_visible_in_snapshot(txid, $1::text::pg_snapshot))) \
                     FROM s",
                ))
                .persistent(self.named())
                .bind(done.as_deref())
                .fetch_one(c.conn())
                .await?;
                (snap, first.map_or(i64::MAX - 1, |f| f - 1))
            }
        };
        let rows = sqlx::query(&self.names().render(
            "SELECT seq, entity_type, entity_key, kind, data::text AS data, \
                    before::text AS before \
             FROM {changes} \
             WHERE pg_visible_in_snapshot(txid, $2::text::pg_snapshot) \
               AND ($1::text IS NULL \
                    OR NOT pg_visible_in_snapshot(txid, $1::text::pg_snapshot)) \
               AND seq > $3 \
             ORDER BY seq LIMIT $4",
        ))
        .persistent(self.named())
        .bind(done.as_deref())
        .bind(&reading)
        .bind(last)
        .bind(limit)
        .fetch_all(c.conn())
        .await?;
        c.finish().await?;
        let read = rows.len();
        let mut log = Vec::with_capacity(read);
        for r in rows {
            let kind: String = r.try_get("kind")?;
            let kind = ChangeKind::parse(&kind).ok_or_else(|| {
                Error::InvalidMessage(format!("unknown change kind {kind:?} in the change log"))
            })?;
            log.push((
                r.try_get::<i64, _>("seq")?,
                Change::from_parts(
                    r.try_get("entity_type")?,
                    r.try_get("entity_key")?,
                    kind,
                    parse_json(r.try_get("data")?)?,
                    parse_json(r.try_get("before")?)?,
                ),
            ));
        }
        let full = read as i64 >= limit;
        let next = if full {
            CursorState::Pg {
                done: done.clone(),
                reading: Some(reading),
                last: log.last().map_or(last, |(s, _)| *s),
            }
        } else {
            // This generation is read: the next page starts a new one.
            CursorState::Pg {
                done: Some(reading),
                reading: None,
                last: 0,
            }
        };
        Ok(ChangePage {
            changes: coalesce(log),
            next: Cursor(next),
            more: full,
            caught_up: fresh && !full,
            read,
        })
    }

    /// Deletes logged changes older than `before`, in batches of `batch`,
    /// oldest first; returns how many. Consumers whose cursor is older lose
    /// those changes: start them again from a snapshot.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a `batch` below 1;
    /// [`Error::Database`](crate::Error::Database) if the database fails.
    pub async fn purge_changes(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        batch: i64,
    ) -> Result<u64> {
        let sql = self.names().render(
            "DELETE FROM {changes} WHERE seq IN (\
               SELECT seq FROM {changes} WHERE seq <= coalesce((\
                 SELECT max(seq) FROM (SELECT seq, created_at FROM {changes} \
                                        ORDER BY seq LIMIT $2) s \
                  WHERE created_at < $1), -1) \
               ORDER BY seq LIMIT $2)",
        );
        if batch < 1 {
            return Err(Error::InvalidConfig {
                field: "batch",
                reason: "must be at least 1".to_owned(),
            });
        }
        let mut total = 0;
        loop {
            let mut c = self.standalone().await?;
            let n = sqlx::query(&sql)
                .persistent(self.named())
                .bind(before)
                .bind(batch)
                .execute(c.conn())
                .await?
                .rows_affected();
            c.finish().await?;
            total += n;
            if (n as i64) < batch {
                return Ok(total);
            }
        }
    }
}
