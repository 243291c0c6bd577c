//! Migrations on SQLite: the runner that applies a [`MigrationSet`] (the
//! outbox's here, the inbox's in `inbox/sqlite.rs`), the outbox's embedded
//! migrations, [`SqliteOutbox::migrate`] and the check that the tables are
//! at the version this build needs.

use sqlx::sqlite::SqlitePool;

use super::SqliteOutbox;
use crate::error::Result;
use crate::store::MigrationSet;

pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../../migrations/sqlite/0001_core.sql")),
    (
        2,
        include_str!("../../../migrations/sqlite/0002_key_sequences.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/sqlite/0003_changes.sql"),
    ),
    (
        4,
        include_str!("../../../migrations/sqlite/0004_dead_letters_by_position.sql"),
    ),
    (
        5,
        include_str!("../../../migrations/sqlite/0005_parked.sql"),
    ),
    (
        6,
        include_str!("../../../migrations/sqlite/0006_relay_publish_error.sql"),
    ),
];

pub(super) const CREATE_TABLE: &str = include_str!("sql/migrations/create_table.sql");
const LOCK: &str = include_str!("sql/migrations/lock.sql");
pub(super) const VERSION: &str = include_str!("sql/migrations/version.sql");
pub(super) const RECORD: &str = include_str!("sql/migrations/record.sql");

/// Creates or upgrades the tables of `set`, in one transaction. Safe to
/// run on every start and from several processes at once: SQLite
/// serializes the writers, and the transaction starts with a write, so
/// only one applies each version.
pub(crate) async fn apply(pool: &SqlitePool, set: &MigrationSet<'_>) -> Result<()> {
    // Outside the transaction, so that the transaction can start with a
    // write (see the module documentation). Harmless if the rest fails.
    sqlx::query(&set.bookkeeping(CREATE_TABLE))
        .execute(pool)
        .await?;
    let mut tx = pool.begin().await?;
    // Takes the write lock: concurrent migrations wait here.
    sqlx::query(&set.bookkeeping(LOCK))
        .execute(&mut *tx)
        .await?;
    set.apply_pending::<sqlx::Sqlite>(&mut tx, VERSION, RECORD, true)
        .await?;
    tx.commit().await?;
    Ok(())
}

impl SqliteOutbox {
    /// Creates or upgrades the crate's tables, in one transaction. Safe to
    /// run on every start and from several processes at once (SQLite
    /// serializes the writers).
    ///
    /// # Errors
    ///
    /// [`Error::SchemaTooNew`](crate::Error::SchemaTooNew) if the tables are
    /// at a newer version than this build of the crate knows (nothing is
    /// changed); [`Error::Database`](crate::Error::Database) if a statement
    /// fails, in which case no version of this run is applied.
    pub async fn migrate(&self) -> Result<()> {
        apply(&self.inner.pool, &self.migrations()).await
    }
}

/// Whether a failed read of the applied version says the table does not
/// exist (never migrated).
pub(super) fn missing_table(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.message().starts_with("no such table")
}
