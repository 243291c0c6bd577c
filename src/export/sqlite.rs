//! The change log on SQLite.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Executor, Sqlite};

use super::api::export_api;
use super::{coalesce, decode_log, json_text, ChangePage, Cursor, CursorState, LogRow};
use crate::change::Change;
use crate::error::{Error, Result};
use crate::SqliteOutbox;

fn micros_now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl SqliteOutbox {
    export_api!(Sqlite, SqliteConnection, snapshot: {
        /// Run the snapshot query and this call in one transaction: in WAL
        /// mode a transaction reads one snapshot from its first read to its
        /// end.
    });

    /// Writes `change` to the log (validated by the caller).
    async fn insert_change<'c, E>(&self, executor: E, change: &Change) -> Result<()>
    where
        E: Executor<'c, Database = Sqlite>,
    {
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

    /// The cursor as of the caller's transaction.
    async fn current_cursor<'c, E>(&self, executor: E) -> Result<Cursor>
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

    async fn stored_cursor(&self, consumer: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            &self
                .names()
                .render("SELECT cursor FROM {export_cursors} WHERE consumer = ?"),
        )
        .bind(consumer)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Every stored cursor: consumer, cursor, when it was committed.
    async fn stored_cursors(&self) -> Result<Vec<(String, String, DateTime<Utc>)>> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as(&self.names().render(
                "SELECT consumer, cursor, updated_at FROM {export_cursors} ORDER BY consumer",
            ))
            .fetch_all(self.pool())
            .await?;
        rows.into_iter()
            .map(|(consumer, cursor, at)| {
                let at = DateTime::<Utc>::from_timestamp_micros(at).ok_or_else(|| {
                    Error::Database(sqlx::Error::Decode(
                        format!("export cursor of {consumer}: time {at} out of range").into(),
                    ))
                })?;
                Ok((consumer, cursor, at))
            })
            .collect()
    }

    async fn commit_cursor_alone(&self, consumer: &str, cursor: &Cursor) -> Result<()> {
        self.store_cursor(self.pool(), consumer, cursor).await
    }

    /// Refuses a cursor of another backend.
    fn check_cursor(&self, cursor: &Cursor) -> Result<()> {
        match cursor.0 {
            CursorState::Pg { .. } | CursorState::MySql { .. } => {
                Err(Error::CursorBackendMismatch(cursor.to_string()))
            }
            _ => Ok(()),
        }
    }

    async fn store_cursor<'c, E>(&self, executor: E, consumer: &str, cursor: &Cursor) -> Result<()>
    where
        E: Executor<'c, Database = Sqlite>,
    {
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

    /// The next page after `consumer`'s stored cursor (the start of the
    /// log if it has none).
    async fn page_since(&self, consumer: &str, limit: i64) -> Result<ChangePage> {
        let cursor = self
            .cursor(consumer)
            .await?
            .unwrap_or_else(Cursor::beginning);
        self.check_cursor(&cursor)?;
        self.read_page(&cursor, limit).await
    }

    /// Stores `cursor` as `consumer`'s, then reads the page after it.
    async fn commit_then_read(
        &self,
        consumer: &str,
        cursor: &Cursor,
        limit: i64,
    ) -> Result<ChangePage> {
        self.commit_cursor_alone(consumer, cursor).await?;
        self.read_page(cursor, limit).await
    }

    /// The next page after `cursor` (of this backend), at most `limit`
    /// logged changes before coalescing.
    async fn read_page(&self, cursor: &Cursor, limit: i64) -> Result<ChangePage> {
        let last = match &cursor.0 {
            CursorState::Start => 0,
            CursorState::Sqlite { last } => *last,
            CursorState::Pg { .. } | CursorState::MySql { .. } => {
                return Err(Error::CursorBackendMismatch(cursor.to_string()))
            }
        };
        let rows: Vec<LogRow> = sqlx::query_as(&self.names().render(
            "SELECT seq, entity_type, entity_key, kind, data, before FROM {changes} \
             WHERE seq > ? ORDER BY seq LIMIT ?",
        ))
        .bind(last)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let read = rows.len();
        let log = decode_log(rows)?;
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

    /// Deletes up to `batch` logged changes older than `before`, oldest
    /// first, in a statement of its own; returns how many.
    async fn purge_changes_once(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        batch: i64,
    ) -> Result<u64> {
        let sql = self.names().render(
            "DELETE FROM {changes} WHERE seq IN (\
               SELECT seq FROM {changes} WHERE created_at < ? ORDER BY seq LIMIT ?)",
        );
        Ok(sqlx::query(&sql)
            .bind(before.timestamp_micros())
            .bind(batch)
            .execute(self.pool())
            .await?
            .rows_affected())
    }
}
