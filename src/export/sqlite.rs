//! The change log on SQLite.

use sqlx::sqlite::SqliteConnection;
use sqlx::{Executor, Row, Sqlite};

use super::{coalesce, ChangePage, Cursor, CursorState};
use crate::change::{Change, ChangeKind};
use crate::error::{Error, Result};
use crate::message::Enqueued;
use crate::SqliteOutbox;

fn json_text(v: Option<&serde_json::Value>) -> Option<String> {
    v.map(|v| v.to_string())
}

fn parse_json(s: Option<String>) -> Result<Option<serde_json::Value>> {
    s.map(|s| serde_json::from_str(&s).map_err(Error::Serialize))
        .transpose()
}

fn micros_now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl SqliteOutbox {
    /// Records a change in the change log, with the caller's executor
    /// (normally `&mut *tx`, the transaction that made the change).
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
        E: Executor<'c, Database = Sqlite>,
    {
        change.validate()?;
        let sql = self.names().render(
            "INSERT INTO {changes} (entity_type, entity_key, kind, data, before, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        );
        sqlx::query(&sql)
            .bind(change.entity_type())
            .bind(change.key())
            .bind(change.kind().as_str())
            .bind(json_text(change.data()))
            .bind(json_text(change.before()))
            .bind(micros_now())
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
        conn: &mut SqliteConnection,
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
    /// transaction sees: run the snapshot query and this call in one
    /// transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) if the database fails.
    pub async fn snapshot_cursor<'c, E>(&self, executor: E) -> Result<Cursor>
    where
        E: Executor<'c, Database = Sqlite>,
    {
        let last: i64 = sqlx::query_scalar(
            &self
                .names()
                .render("SELECT coalesce(max(seq), 0) FROM {changes}"),
        )
        .fetch_one(executor)
        .await?;
        Ok(Cursor(CursorState::Sqlite { last }))
    }

    /// The cursor stored for `consumer`, if it ever committed one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCursor`](crate::Error::InvalidCursor) if the stored cursor cannot be
    /// read; [`Error::Database`](crate::Error::Database) if the database fails.
    pub async fn cursor(&self, consumer: &str) -> Result<Option<Cursor>> {
        let s: Option<String> = sqlx::query_scalar(
            &self
                .names()
                .render("SELECT cursor FROM {export_cursors} WHERE consumer = ?"),
        )
        .bind(consumer)
        .fetch_optional(self.pool())
        .await?;
        s.map(|s| s.parse()).transpose()
    }

    /// Stores `consumer`'s cursor: call after applying a page.
    ///
    /// # Errors
    ///
    /// [`Error::CursorBackendMismatch`](crate::Error::CursorBackendMismatch) for a cursor of
    /// another backend; [`Error::Database`](crate::Error::Database) if the database fails.
    pub async fn commit_cursor(&self, consumer: &str, cursor: &Cursor) -> Result<()> {
        self.commit_cursor_with(self.pool(), consumer, cursor).await
    }

    /// Stores `consumer`'s cursor with the caller's executor, for a replica
    /// in this database that commits the cursor with the applied page.
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
        E: Executor<'c, Database = Sqlite>,
    {
        if matches!(cursor.0, CursorState::Pg { .. }) {
            return Err(Error::CursorBackendMismatch(cursor.to_string()));
        }
        sqlx::query(&self.names().render(
            "INSERT INTO {export_cursors} (consumer, cursor, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (consumer) DO UPDATE SET cursor = excluded.cursor, \
             updated_at = excluded.updated_at",
        ))
        .bind(consumer)
        .bind(cursor.to_string())
        .bind(micros_now())
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
        let last = match &cursor.0 {
            CursorState::Start => 0,
            CursorState::Sqlite { last } => *last,
            CursorState::Pg { .. } => return Err(Error::CursorBackendMismatch(cursor.to_string())),
        };
        let rows = sqlx::query(&self.names().render(
            "SELECT seq, entity_type, entity_key, kind, data, before FROM {changes} \
             WHERE seq > ? ORDER BY seq LIMIT ?",
        ))
        .bind(last)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
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
        let next_last = log.last().map_or(last, |(s, _)| *s);
        Ok(ChangePage {
            changes: coalesce(log),
            next: Cursor(CursorState::Sqlite { last: next_last }),
            more: read as i64 >= limit,
            // One writer at a time: positions follow commit order, and a
            // short page reached the end of what is committed.
            caught_up: (read as i64) < limit,
            read,
        })
    }

    /// Deletes logged changes older than `before`, in batches of `batch`,
    /// oldest first; returns how many.
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
               SELECT seq FROM {changes} WHERE created_at < ? ORDER BY seq LIMIT ?)",
        );
        if batch < 1 {
            return Err(Error::InvalidConfig {
                field: "batch",
                reason: "must be at least 1".to_owned(),
            });
        }
        let mut total = 0;
        loop {
            let n = sqlx::query(&sql)
                .bind(before.timestamp_micros())
                .bind(batch)
                .execute(self.pool())
                .await?
                .rows_affected();
            total += n;
            if (n as i64) < batch {
                return Ok(total);
            }
        }
    }
}
