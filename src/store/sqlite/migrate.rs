//! The schema: the embedded migrations, applying them, and the check that
//! the tables are not newer than this build.

use chrono::Utc;
use sqlx::Executor;

use super::decode::micros;
use super::SqliteOutbox;
use crate::error::Result;
use crate::store::{check_schema_current, check_schema_version};

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
];

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
        let n = &self.inner.names;
        let sql = &self.inner.sql;
        // Outside the transaction, so that the transaction can start with a
        // write (see the module documentation). Harmless if the rest fails.
        sqlx::query(&sql.migrations_create)
            .execute(&self.inner.pool)
            .await?;
        let mut tx = self.inner.pool.begin().await?;
        // Takes the write lock: concurrent migrations wait here, so only one
        // applies each version.
        sqlx::query(&sql.migrations_lock).execute(&mut *tx).await?;
        let current: Option<i64> = sqlx::query_scalar(&sql.migrations_version)
            .fetch_one(&mut *tx)
            .await?;
        let current = current.unwrap_or(0);
        check_schema_version(Some(current), MIGRATIONS)?;
        for (version, migration) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            // Several statements: `execute` on a string without arguments
            // runs them all (and, unlike `raw_sql`, keeps the future `Send`).
            tx.execute(n.render(migration).as_str()).await?;
            sqlx::query(&sql.migrations_record)
                .bind(version)
                .bind(micros(Utc::now()))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Refuses tables at another migration version than this build needs.
pub(super) async fn check_schema(outbox: &SqliteOutbox) -> Result<()> {
    let found: Option<i64> = match sqlx::query_scalar(&outbox.inner.sql.migrations_version)
        .fetch_one(&outbox.inner.pool)
        .await
    {
        Ok(v) => v,
        // No tables at all: never migrated.
        Err(sqlx::Error::Database(e)) if e.message().starts_with("no such table") => None,
        Err(e) => return Err(e.into()),
    };
    check_schema_current(found, MIGRATIONS)
}
