//! The change log on MySQL.
//!
//! Positions (`seq`) are given at insert and do not follow commit order,
//! and MySQL has no snapshot a cursor could hold. The sequencer gives
//! committed changes a second number, the stamp, that does: under the
//! lock of its one row it reads the changes without a stamp that are
//! committed (a plain read sees no other), in position order, and stamps
//! them with numbers above every stamp given before. A change still in an
//! open transaction is not read, so it is stamped later, above whatever
//! was stamped meanwhile: a late commit is never passed over. Changes of
//! one entity are written under its commit-order lock, so their positions
//! and therefore their stamps follow commit order. Readers page by stamp
//! and run the sequencer first, so a page holds whatever is committed when
//! it is read.
//!
//! A snapshot cursor is the largest stamp the caller's snapshot sees plus
//! the positions of the changes it sees that had no stamp yet: they will
//! be stamped above it, and are skipped when met. Those include the
//! changes the caller's own transaction logged before taking the cursor:
//! its snapshot query saw them, so the pages after it do not repeat them.
//! A page that reaches the end of the log forgets the positions still to
//! skip (each was met, or purged unread).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlConnection;
use sqlx::{Executor, MySql};

use super::api::export_api;
use super::{coalesce, decode_log, json_text, ChangePage, Cursor, CursorState};
use crate::change::Change;
use crate::error::{Error, Result};
use crate::store::mysql::decode::text;
use crate::store::mysql::{begin_read_committed, execute_read_committed, key_slot, with_list};
use crate::MySqlOutbox;

/// Changes stamped per sequencer transaction.
const STAMP_BATCH: i64 = 10_000;

type StampedRow = (
    i64,
    i64,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

impl MySqlOutbox {
    export_api!(MySql, MySqlConnection, log: connection, snapshot: {
        /// Run the snapshot query and this call in one transaction at
        /// `REPEATABLE READ` (MySQL's default), where every plain read sees
        /// the snapshot taken by the first one.
        ///
        /// ```no_run
        /// # async fn demo(outbox: outbox::MySqlOutbox, pool: sqlx::MySqlPool) -> outbox::Result<()> {
        /// let mut tx = pool.begin().await?;
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

    /// Writes `change` to the log (validated by the caller), after the
    /// commit-order lock of its entity.
    async fn insert_change(&self, conn: &mut MySqlConnection, change: &Change) -> Result<()> {
        let names = self.names();
        sqlx::query(&names.render("SELECT slot FROM {key_slots} WHERE slot = ? FOR UPDATE"))
            .bind(i64::from(key_slot(&change.partition_key())))
            .fetch_all(&mut *conn)
            .await?;
        sqlx::query(&names.render(
            "INSERT INTO {changes} (entity_type, entity_key, kind, data, `before`, created_at) \
             VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6))",
        ))
        .bind(change.entity_type())
        .bind(change.key())
        .bind(change.kind().as_str())
        .bind(json_text(change.data()))
        .bind(json_text(change.before()))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// The cursor as of the caller's snapshot: one statement, so one
    /// snapshot even at `READ COMMITTED`.
    async fn current_cursor<'c, E>(&self, executor: E) -> Result<Cursor>
    where
        E: Executor<'c, Database = MySql>,
    {
        let rows: Vec<(i64, i64)> = sqlx::query_as(&self.names().render(
            "SELECT 0 AS k, COALESCE(MAX(stamp), 0) AS v FROM {changes} \
             UNION ALL \
             SELECT 1, seq FROM {changes} WHERE stamp IS NULL",
        ))
        .fetch_all(executor)
        .await?;
        let mut stamp = 0;
        let mut skip = Vec::new();
        for (k, v) in rows {
            if k == 0 {
                stamp = v;
            } else {
                skip.push(v);
            }
        }
        skip.sort_unstable();
        Ok(Cursor(CursorState::MySql { stamp, skip }))
    }

    async fn stored_cursor(&self, consumer: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            &self
                .names()
                .render("SELECT `cursor` FROM {export_cursors} WHERE consumer = ?"),
        )
        .bind(consumer)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Every stored cursor: consumer, cursor, when it was committed.
    async fn stored_cursors(&self) -> Result<Vec<(String, String, DateTime<Utc>)>> {
        let rows: Vec<(Vec<u8>, String, DateTime<Utc>)> = sqlx::query_as(&self.names().render(
            "SELECT consumer, `cursor`, updated_at FROM {export_cursors} ORDER BY consumer",
        ))
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(consumer, cursor, at)| Ok((text(consumer)?, cursor, at)))
            .collect()
    }

    async fn commit_cursor_alone(&self, consumer: &str, cursor: &Cursor) -> Result<()> {
        self.store_cursor(self.pool(), consumer, cursor).await
    }

    /// Refuses a cursor of another backend.
    fn check_cursor(&self, cursor: &Cursor) -> Result<()> {
        match cursor.0 {
            CursorState::Pg { .. } | CursorState::Sqlite { .. } => {
                Err(Error::CursorBackendMismatch(cursor.to_string()))
            }
            _ => Ok(()),
        }
    }

    async fn store_cursor<'c, E>(&self, executor: E, consumer: &str, cursor: &Cursor) -> Result<()>
    where
        E: Executor<'c, Database = MySql>,
    {
        sqlx::query(&self.names().render(
            "INSERT INTO {export_cursors} (consumer, `cursor`, updated_at) \
             VALUES (?, ?, UTC_TIMESTAMP(6)) \
             ON DUPLICATE KEY UPDATE `cursor` = VALUES(`cursor`), updated_at = VALUES(updated_at)",
        ))
        .bind(consumer)
        .bind(cursor.to_string())
        .execute(executor)
        .await?;
        Ok(())
    }

    /// Stamps every change committed so far (see the module
    /// documentation), a batch per transaction.
    async fn sequence(&self) -> Result<()> {
        let names = self.names();
        let lock = names.render("SELECT last_stamp FROM {sequencer} WHERE id = 1 FOR UPDATE");
        let unstamped =
            names.render("SELECT seq FROM {changes} WHERE stamp IS NULL ORDER BY seq LIMIT ?");
        // Stamps grow with positions within a batch and above every
        // earlier batch (gaps are harmless). By primary key over a list:
        // read through the stamp index, or joined from JSON_TABLE, the
        // update would wait for every open transaction's unstamped change.
        // Only the sequencer stamps, under its lock, so the rows read are
        // still unstamped; the condition says so to the reader.
        let stamp = names
            .render("UPDATE {changes} SET stamp = ? + seq WHERE seq IN ({list}) AND stamp IS NULL");
        let advance = names.render("UPDATE {sequencer} SET last_stamp = ? WHERE id = 1");
        loop {
            let mut tx = begin_read_committed(self.pool()).await?;
            let last: i64 = sqlx::query_scalar(&lock).fetch_one(&mut *tx).await?;
            // A plain read at READ COMMITTED: committed changes only.
            let seqs: Vec<i64> = sqlx::query_scalar(&unstamped)
                .bind(STAMP_BATCH)
                .fetch_all(&mut *tx)
                .await?;
            if seqs.is_empty() {
                tx.rollback().await?;
                return Ok(());
            }
            // seqs is sorted: the first gets last + 1.
            let offset = last + 1 - seqs[0];
            let text = with_list(&stamp, seqs.len());
            let mut q = sqlx::query(&text).bind(offset);
            for s in &seqs {
                q = q.bind(*s);
            }
            q.persistent(false).execute(&mut *tx).await?;
            sqlx::query(&advance)
                .bind(offset + seqs[seqs.len() - 1])
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            if (seqs.len() as i64) < STAMP_BATCH {
                return Ok(());
            }
        }
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
        let (stamp, skip) = match &cursor.0 {
            CursorState::Start => (0, Vec::new()),
            CursorState::MySql { stamp, skip } => (*stamp, skip.clone()),
            _ => return Err(Error::CursorBackendMismatch(cursor.to_string())),
        };
        self.sequence().await?;
        let rows: Vec<StampedRow> = sqlx::query_as(&self.names().render(
            "SELECT stamp, seq, entity_type, entity_key, kind, data, `before` FROM {changes} \
             WHERE stamp > ? ORDER BY stamp LIMIT ?",
        ))
        .bind(stamp)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let read = rows.len();
        let next_stamp = rows.last().map_or(stamp, |r| r.0);
        let skipped: HashSet<i64> = skip.iter().copied().collect();
        let mut met = HashSet::new();
        let mut log = Vec::with_capacity(read);
        for (stamp, seq, entity_type, key, kind, data, before) in rows {
            if skipped.contains(&seq) {
                met.insert(seq);
                continue;
            }
            let opt = |v: Option<Vec<u8>>| v.map(text).transpose();
            log.push((
                stamp,
                text(entity_type)?,
                text(key)?,
                text(kind)?,
                opt(data)?,
                opt(before)?,
            ));
        }
        let log = decode_log(log)?;
        // A short page read everything stamped, and the sequencer stamped
        // every committed change: a position still to skip and not met was
        // purged before this consumer read so far. Forget it.
        let caught_up = (read as i64) < limit;
        let skip = if caught_up {
            Vec::new()
        } else {
            skip.into_iter().filter(|s| !met.contains(s)).collect()
        };
        Ok(ChangePage {
            changes: coalesce(log),
            next: Cursor(CursorState::MySql {
                stamp: next_stamp,
                skip,
            }),
            more: read as i64 >= limit,
            // The sequencer stamped everything committed before the read:
            // a short page reached its end.
            caught_up,
            read,
        })
    }

    /// Deletes up to `batch` stamped changes older than `before`, oldest
    /// first, in a statement of its own; returns how many.
    async fn purge_changes_once(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        batch: i64,
    ) -> Result<u64> {
        let sql = self.names().render(
            "DELETE FROM {changes} WHERE stamp IS NOT NULL AND created_at < ? \
             ORDER BY stamp LIMIT ?",
        );
        let q = sqlx::query(&sql).bind(before).bind(batch);
        Ok(execute_read_committed(self.pool(), q)
            .await?
            .rows_affected())
    }
}
