//! The change log on PostgreSQL.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::{Executor, Postgres, Row};

use super::api::export_api;
use super::{coalesce, json_text, logged_change, ChangePage, Cursor, CursorState};
use crate::change::{Change, Doc};
use crate::error::{Error, Result};
use crate::store::postgres::{change_lock_class, column};
use crate::PgOutbox;

impl PgOutbox {
    export_api!(Postgres, PgConnection, snapshot: {
        /// Run the snapshot query and this call in one `REPEATABLE READ`
        /// transaction, so both see one snapshot.
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
    });

    /// Writes `change` to the log (validated by the caller).
    async fn insert_change<'c, E>(&self, executor: E, change: &Change) -> Result<()>
    where
        E: Executor<'c, Database = Postgres>,
    {
        let sql = self.names().render(
            "WITH l AS MATERIALIZED (SELECT 1 FROM {key_slots} \
                 WHERE slot = hashtext($7) & 65535 AND $6 IS NOT NULL FOR NO KEY UPDATE) \
             INSERT INTO {changes} (entity_type, entity_key, kind, data, before) \
             SELECT $1, $2, $3, $4::jsonb, $5::jsonb WHERE (SELECT count(*) FROM l) >= 0",
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

    /// The cursor as of the caller's transaction.
    async fn current_cursor<'c, E>(&self, executor: E) -> Result<Cursor>
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

    async fn stored_cursor(&self, consumer: &str) -> Result<Option<String>> {
        let sql = &self.sql().export_cursor;
        self.on_app()
            .scalar(sqlx::query_scalar(sql).bind(consumer))
            .await
    }

    /// Every stored cursor: consumer, cursor, when it was committed.
    async fn stored_cursors(&self) -> Result<Vec<(String, String, DateTime<Utc>)>> {
        let sql = self
            .names()
            .render("SELECT consumer, cursor, updated_at FROM {export_cursors} ORDER BY consumer");
        let mut c = self.standalone().await?;
        let rows = sqlx::query_as(&sql)
            .persistent(self.named())
            .fetch_all(c.conn())
            .await?;
        c.finish().await?;
        Ok(rows)
    }

    async fn commit_cursor_alone(&self, consumer: &str, cursor: &Cursor) -> Result<()> {
        let mut c = self.standalone().await?;
        self.store_cursor(c.conn(), consumer, cursor).await?;
        c.finish().await
    }

    /// Refuses a cursor of another backend.
    fn check_cursor(&self, cursor: &Cursor) -> Result<()> {
        match cursor.0 {
            CursorState::Sqlite { .. } | CursorState::MySql { .. } => {
                Err(Error::CursorBackendMismatch(cursor.to_string()))
            }
            _ => Ok(()),
        }
    }

    async fn store_cursor<'c, E>(&self, executor: E, consumer: &str, cursor: &Cursor) -> Result<()>
    where
        E: Executor<'c, Database = Postgres>,
    {
        sqlx::query(&self.sql().export_store_cursor)
            .persistent(self.named())
            .bind(consumer)
            .bind(cursor.to_string())
            .execute(executor)
            .await?;
        Ok(())
    }

    /// The next page after `consumer`'s stored cursor (the start of the
    /// log if it has none): the cursor and the page are read on one
    /// connection.
    async fn page_since(&self, consumer: &str, limit: i64) -> Result<ChangePage> {
        let mut c = self.standalone().await?;
        let stored: Option<String> = sqlx::query_scalar(&self.sql().export_cursor)
            .persistent(self.named())
            .bind(consumer)
            .fetch_optional(c.conn())
            .await?;
        let cursor = match stored {
            Some(s) => s.parse()?,
            None => Cursor::beginning(),
        };
        self.check_cursor(&cursor)?;
        let page = self.read_page_on(c.conn(), &cursor, limit, None).await?;
        c.finish().await?;
        Ok(page)
    }

    /// The next page after `cursor` (of this backend), at most `limit`
    /// logged changes before coalescing.
    async fn read_page(&self, cursor: &Cursor, limit: i64) -> Result<ChangePage> {
        let mut c = self.standalone().await?;
        let page = self.read_page_on(c.conn(), cursor, limit, None).await?;
        c.finish().await?;
        Ok(page)
    }

    /// Stores `cursor` as `consumer`'s, then reads the page after it, in
    /// one statement.
    async fn commit_then_read(
        &self,
        consumer: &str,
        cursor: &Cursor,
        limit: i64,
    ) -> Result<ChangePage> {
        let mut c = self.standalone().await?;
        let page = self
            .read_page_on(c.conn(), cursor, limit, Some(consumer))
            .await?;
        c.finish().await?;
        Ok(page)
    }

    /// [`read_page`](Self::read_page) on the connection `conn`; first
    /// storing `cursor` as `committing`'s cursor, if given.
    async fn read_page_on(
        &self,
        conn: &mut PgConnection,
        cursor: &Cursor,
        limit: i64,
        committing: Option<&str>,
    ) -> Result<ChangePage> {
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
        let (rows, reading, last) = match reading {
            // Within a generation: its next page, storing the cursor in
            // the same statement if asked.
            Some(reading) => {
                let sql = match committing {
                    Some(_) => &self.sql().export_commit_page,
                    None => &self.sql().export_page,
                };
                let mut page = sqlx::query(sql)
                    .persistent(self.named())
                    .bind(done.as_deref())
                    .bind(reading)
                    .bind(*last)
                    .bind(limit);
                if let Some(consumer) = committing {
                    page = page.bind(consumer).bind(cursor.to_string());
                }
                (page.fetch_all(&mut *conn).await?, reading.clone(), *last)
            }
            // A new generation, everything committed as of now and not as
            // of `done`, opened and read from its first position in one
            // statement, which stores the cursor too if asked: the page's
            // rows, and one row without a change that carries the
            // generation's snapshot.
            None => {
                let sql = match committing {
                    Some(_) => &self.sql().export_commit_open_page,
                    None => &self.sql().export_open_page,
                };
                let mut page = sqlx::query(sql)
                    .persistent(self.named())
                    .bind(done.as_deref())
                    .bind(limit);
                if let Some(consumer) = committing {
                    page = page.bind(consumer).bind(cursor.to_string());
                }
                let mut rows = page.fetch_all(&mut *conn).await?;
                let mut at = None;
                for (i, r) in rows.iter().enumerate() {
                    if r.try_get::<Option<i64>, _>(0)?.is_none() {
                        at = Some(i);
                    }
                }
                let Some(at) = at else {
                    return Err(Error::Database(sqlx::Error::Protocol(
                        "opening a change-log generation returned no snapshot".to_owned(),
                    )));
                };
                let snapshot: String = rows.remove(at).try_get(6)?;
                (rows, snapshot, 0)
            }
        };
        let read = rows.len();
        // Decoded in place: the kind is read where the row holds it, and
        // the documents are kept as `jsonb`'s text (valid JSON), parsed
        // only if looked at.
        let doc = |t: Option<&str>| t.map(Doc::from_valid_text);
        let mut log = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                // Types checked on the first row (see `column`).
                let check = i == 0;
                logged_change(
                    column(r, 0, check)?,
                    column(r, 1, check)?,
                    column(r, 2, check)?,
                    column(r, 3, check)?,
                    doc(column(r, 4, check)?),
                    doc(column(r, 5, check)?),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        drop(rows);
        // In position order as read (a new generation's statement does not
        // promise it over its union; its page's rows come in that order).
        if !log.is_sorted_by_key(|(s, _)| *s) {
            log.sort_by_key(|(s, _)| *s);
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

    /// Deletes up to `batch` logged changes older than `before`, oldest
    /// first, in a statement of its own; returns how many.
    async fn purge_changes_once(
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
        self.on_app()
            .execute(sqlx::query(&sql).bind(before).bind(batch))
            .await
    }
}
