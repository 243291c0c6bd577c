//! The export methods every outbox type has alike, declared once by
//! `export_api!` over what each backend provides (in `postgres.rs`,
//! `sqlite.rs`): `stored_cursor`, `commit_cursor_alone`, `check_cursor`,
//! `store_cursor`, `read_page` and `purge_changes_once`.

/// Declares `record_change`, `cursor`, `commit_cursor`,
/// `commit_cursor_with`, `changes_since`, `changes_after` and
/// `purge_changes` on an outbox type of database `$db` whose connection
/// type is `$conn`.
macro_rules! export_api {
    ($db:ty, $conn:ty) => {
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
            let cursor = self
                .cursor(consumer)
                .await?
                .unwrap_or_else(crate::export::Cursor::beginning);
            self.changes_after(&cursor, limit).await
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
