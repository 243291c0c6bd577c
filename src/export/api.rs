//! The export methods every outbox type has alike, declared once by
//! `export_api!` over what each backend provides (in `postgres.rs`,
//! `sqlite.rs`, `mysql.rs`): `insert_change`, `current_cursor`, `stored_cursor`,
//! `stored_cursors`,
//! `commit_cursor_alone`, `check_cursor`, `store_cursor`, `read_page`,
//! `page_since`, `commit_then_read` and `purge_changes_once`.

/// Declares the export methods on an outbox type of database `$db` whose
/// connection type is `$conn`; the documentation given after `snapshot:`
/// tells how to take a snapshot on that database.
macro_rules! export_api {
    // `log_change` takes any executor where one statement logs a change.
    (@log_change executor, $db:ty, $conn:ty) => {
        /// Records a change in the change log, with the caller's executor
        /// (normally `&mut *tx`, the transaction that made the change).
        /// Changes of one entity are logged in commit order: where writers
        /// run concurrently (PostgreSQL), the entity takes the commit-order
        /// lock an enqueue of its partition key takes.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidMessage`](crate::Error::InvalidMessage) if the
        /// change holds what the database would refuse (empty or oversized
        /// names, NUL in text or JSON), checked before anything is sent so
        /// the caller's transaction stays usable;
        /// [`Error::Database`](crate::Error::Database) if the database fails
        /// (the caller's transaction is then aborted).
        pub async fn log_change<'c, E>(
            &self,
            executor: E,
            change: &crate::change::Change,
        ) -> crate::Result<()>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            change.validate()?;
            self.insert_change(executor, change).await
        }
    };
    // It takes a connection where logging is two statements (MySQL: the
    // entity's commit-order lock, then the insert).
    (@log_change connection, $db:ty, $conn:ty) => {
        /// Records a change in the change log, on the caller's connection
        /// (`&mut *tx`, the transaction that made the change). Changes of
        /// one entity are logged in commit order: the entity first takes
        /// the commit-order lock an enqueue of its partition key takes,
        /// held until the caller's transaction ends.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidMessage`](crate::Error::InvalidMessage) if the
        /// change holds what the database would refuse (empty or oversized
        /// names, NUL in text or JSON), checked before anything is sent so
        /// the caller's transaction stays usable;
        /// [`Error::Database`](crate::Error::Database) if the database fails.
        pub async fn log_change(
            &self,
            conn: &mut $conn,
            change: &crate::change::Change,
        ) -> crate::Result<()> {
            change.validate()?;
            self.insert_change(conn, change).await
        }
    };
    ($db:ty, $conn:ty, snapshot: { $(#[$snapshot:meta])* }) => {
        $crate::export::api::export_api!($db, $conn, log: executor, snapshot: { $(#[$snapshot])* });
    };
    ($db:ty, $conn:ty, log: $log:ident, snapshot: { $(#[$snapshot:meta])* }) => {
        $crate::export::api::export_api!(@log_change $log, $db, $conn);

        /// The cursor that continues exactly after what the caller's
        /// transaction sees: the changes after it are exactly those the
        /// caller's snapshot query did not see.
        $(#[$snapshot])*
        ///
        /// # Errors
        ///
        /// [`Error::Database`](crate::Error::Database) if the database fails.
        pub async fn snapshot_cursor<'c, E>(&self, executor: E) -> crate::Result<crate::export::Cursor>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            self.current_cursor(executor).await
        }

        /// Records a change in the change log and enqueues it as a message
        /// to `topic` (see [`Change::to_message`](crate::change::Change::to_message)),
        /// both in the caller's transaction.
        ///
        /// Unlike [`log_change`](Self::log_change) it takes a connection,
        /// not any executor: its two statements must run on the same
        /// connection (a pool would run them on two, outside one
        /// transaction). Pass `&mut *tx`.
        ///
        /// # Errors
        ///
        /// As [`enqueue`](Self::enqueue) and [`log_change`](Self::log_change):
        /// both are checked before the first statement is sent;
        /// [`Error::Database`](crate::Error::Database) if the database fails.
        pub async fn record_change(
            &self,
            conn: &mut $conn,
            topic: &str,
            change: &crate::change::Change,
        ) -> crate::Result<crate::Enqueued> {
            // Both writes are checked before the first is sent.
            change.validate()?;
            let enqueued = self.enqueue(&mut *conn, change.to_message(topic)?).await?;
            self.log_change(&mut *conn, change).await?;
            Ok(enqueued)
        }

        /// The cursor stored for `consumer`, if it ever committed one.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidCursor`](crate::Error::InvalidCursor) if the
        /// stored cursor cannot be read;
        /// [`Error::Database`](crate::Error::Database) if the database fails.
        pub async fn cursor(&self, consumer: &str) -> crate::Result<Option<crate::export::Cursor>> {
            self.stored_cursor(consumer)
                .await?
                .map(|s| s.parse())
                .transpose()
        }

        /// Every consumer with a stored cursor, by name, and how far behind
        /// it is: the changes logged after its cursor (counted up to
        /// `max`, so a consumer far behind costs one page of `max` rows)
        /// and when it last committed its cursor.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a
        /// `max` below 1; [`Error::InvalidCursor`](crate::Error::InvalidCursor)
        /// if a stored cursor cannot be read;
        /// [`Error::Database`](crate::Error::Database) if the database fails.
        pub async fn export_consumers(
            &self,
            max: i64,
        ) -> crate::Result<Vec<crate::export::ExportConsumer>> {
            crate::export::at_least_one("max", max)?;
            let mut all = Vec::new();
            for (consumer, cursor, committed_at) in self.stored_cursors().await? {
                let cursor: crate::export::Cursor = cursor.parse()?;
                // Page after page, as the consumer would read them: one
                // page may stop short of the end (a PostgreSQL page ends
                // at its snapshot).
                // An empty page that is not caught up but moved the cursor
                // (a PostgreSQL page that ended its generation) goes on.
                let (mut behind, mut more, mut at) = (0i64, false, cursor.clone());
                for _ in 0..10_000 {
                    if behind >= max {
                        break;
                    }
                    let page = self.read_page(&at, max - behind).await?;
                    behind += page.read as i64;
                    more = page.more;
                    let moved = page.next != at;
                    at = page.next;
                    if page.read == 0 && (page.caught_up || !moved) {
                        break;
                    }
                }
                all.push(crate::export::ExportConsumer {
                    consumer,
                    cursor,
                    committed_at,
                    behind: behind as u64,
                    more: more && behind >= max,
                });
            }
            Ok(all)
        }

        /// [`export_consumers`](Self::export_consumers), also set as gauges
        /// labelled by consumer: `outbox_export_behind_changes` (changes
        /// logged after its cursor, counted up to `max`) and
        /// `outbox_export_idle_seconds` (since it last committed its
        /// cursor). Call it now and then (every 30 s, say) from one process.
        ///
        /// # Errors
        ///
        /// As [`export_consumers`](Self::export_consumers); no gauge is set
        /// then.
        pub async fn record_export_lag(
            &self,
            max: i64,
        ) -> crate::Result<Vec<crate::export::ExportConsumer>> {
            let consumers = self.export_consumers(max).await?;
            let now = chrono::Utc::now();
            for c in &consumers {
                let idle = (now - c.committed_at).to_std().unwrap_or_default();
                metrics::gauge!("outbox_export_behind_changes", "consumer" => c.consumer.clone())
                    .set(c.behind as f64);
                metrics::gauge!("outbox_export_idle_seconds", "consumer" => c.consumer.clone())
                    .set(idle.as_secs_f64());
            }
            Ok(consumers)
        }

        /// Stores `consumer`'s cursor: call after applying a page. Writes
        /// in its own statement.
        ///
        /// # Errors
        ///
        /// [`Error::CursorBackendMismatch`](crate::Error::CursorBackendMismatch)
        /// for a cursor of another backend;
        /// [`Error::Database`](crate::Error::Database) if the database fails.
        pub async fn commit_cursor(
            &self,
            consumer: &str,
            cursor: &crate::export::Cursor,
        ) -> crate::Result<()> {
            self.check_cursor(cursor)?;
            self.commit_cursor_alone(consumer, cursor).await
        }

        /// Stores `consumer`'s cursor with the caller's executor: a
        /// consumer whose replica lives in this database commits the
        /// cursor in the transaction that applied the page, and never
        /// re-reads a page.
        ///
        /// # Errors
        ///
        /// [`Error::CursorBackendMismatch`](crate::Error::CursorBackendMismatch)
        /// for a cursor of another backend;
        /// [`Error::Database`](crate::Error::Database) if the database fails.
        pub async fn commit_cursor_with<'c, E>(
            &self,
            executor: E,
            consumer: &str,
            cursor: &crate::export::Cursor,
        ) -> crate::Result<()>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            self.check_cursor(cursor)?;
            self.store_cursor(executor, consumer, cursor).await
        }

        /// The next page after `consumer`'s stored cursor (the start of the
        /// log for a new consumer), at most `limit` logged changes before
        /// coalescing.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a
        /// `limit` below 1; [`Error::InvalidCursor`](crate::Error::InvalidCursor)
        /// if the stored cursor cannot be read;
        /// [`Error::Database`](crate::Error::Database) if the database fails.
        pub async fn changes_since(
            &self,
            consumer: &str,
            limit: i64,
        ) -> crate::Result<crate::export::ChangePage> {
            crate::export::at_least_one("limit", limit)?;
            self.page_since(consumer, limit).await
        }

        /// Stores `consumer`'s cursor and reads the page after it, at most
        /// `limit` logged changes before coalescing: what
        /// [`commit_cursor`](Self::commit_cursor) then
        /// [`changes_after`](Self::changes_after) do, in one call. A consumer
        /// that applies a page, then commits its cursor and reads on, gets
        /// its next page this way with fewer round trips: on PostgreSQL, one
        /// statement, whether the page goes on through a snapshot's
        /// generation of pages or opens the next one (as a caught-up
        /// consumer's every call does).
        ///
        /// ```no_run
        /// # async fn demo(outbox: outbox::PgOutbox) -> outbox::Result<()> {
        /// # fn apply(_: &outbox::export::ChangePage) {}
        /// let mut page = outbox.changes_since("crm", 1000).await?;
        /// loop {
        ///     apply(&page);
        ///     if page.caught_up() {
        ///         outbox.commit_cursor("crm", page.next_cursor()).await?;
        ///         break;
        ///     }
        ///     page = outbox.commit_and_read("crm", page.next_cursor(), 1000).await?;
        /// }
        /// # Ok(()) }
        /// ```
        ///
        /// # Errors
        ///
        /// As [`commit_cursor`](Self::commit_cursor) and
        /// [`changes_after`](Self::changes_after). After an error the
        /// cursor may be stored or not (the read can fail after the
        /// commit): calling again with the same cursor is safe.
        pub async fn commit_and_read(
            &self,
            consumer: &str,
            cursor: &crate::export::Cursor,
            limit: i64,
        ) -> crate::Result<crate::export::ChangePage> {
            crate::export::at_least_one("limit", limit)?;
            self.check_cursor(cursor)?;
            self.commit_then_read(consumer, cursor, limit).await
        }

        /// The next page after `cursor`.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a
        /// `limit` below 1;
        /// [`Error::CursorBackendMismatch`](crate::Error::CursorBackendMismatch)
        /// for a cursor of another backend;
        /// [`Error::InvalidMessage`](crate::Error::InvalidMessage) for a
        /// change log row of an unknown kind;
        /// [`Error::Database`](crate::Error::Database) if the database fails.
        pub async fn changes_after(
            &self,
            cursor: &crate::export::Cursor,
            limit: i64,
        ) -> crate::Result<crate::export::ChangePage> {
            crate::export::at_least_one("limit", limit)?;
            self.check_cursor(cursor)?;
            self.read_page(cursor, limit).await
        }

        /// Deletes logged changes older than `before`, in batches of
        /// `batch`, oldest first; returns how many. Consumers whose cursor
        /// is older lose those changes: start them again from a snapshot.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a
        /// `batch` below 1; [`Error::Database`](crate::Error::Database) if
        /// the database fails.
        pub async fn purge_changes(
            &self,
            before: chrono::DateTime<chrono::Utc>,
            batch: i64,
        ) -> crate::Result<u64> {
            crate::export::at_least_one("batch", batch)?;
            let mut total = 0;
            loop {
                let n = self.purge_changes_once(before, batch).await?;
                total += n;
                if (n as i64) < batch {
                    return Ok(total);
                }
            }
        }
    };
}
pub(crate) use export_api;
