//! The embedded migrations of the PostgreSQL schema, [`PgOutbox::migrate`]
//! and the check that the tables are not newer than this crate.

use sqlx::Executor;

use super::locks::migration_lock_class;
use super::PgOutbox;
use crate::error::{Error, Result};
use crate::store::{check_schema_current, check_schema_version};

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../../migrations/postgres/0001_core.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/postgres/0002_key_sequences.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/postgres/0003_changes.sql"),
    ),
    (
        4,
        include_str!("../../../migrations/postgres/0004_dead_letters_by_position.sql"),
    ),
    (
        5,
        include_str!("../../../migrations/postgres/0005_key_slots.sql"),
    ),
];

impl PgOutbox {
    /// Creates or upgrades the crate's schema and tables. Safe to run from
    /// several processes at once (serialized by an advisory lock) and on
    /// every start.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaTooNew`] if the tables are at a newer migration
    /// version than this crate knows (nothing is changed), and
    /// [`Error::Database`] if a statement fails, for example for lack of
    /// the privilege to create the schema; the migration's transaction is
    /// then rolled back.
    pub async fn migrate(&self) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.migrate_once().await {
                // Another program created the same schema at the same
                // moment (`CREATE SCHEMA IF NOT EXISTS` is not safe against
                // that); the next attempt finds it.
                Err(Error::Database(sqlx::Error::Database(e)))
                    if attempt < 5 && matches!(e.code().as_deref(), Some("23505" | "42P06")) =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    async fn migrate_once(&self) -> Result<()> {
        let n = &self.inner.names;
        let sql = &self.inner.sql;
        let mut tx = self.inner.pool.begin().await?;
        sqlx::query(&sql.migration_lock)
            .persistent(self.named())
            .bind(migration_lock_class(n))
            .execute(&mut *tx)
            .await?;
        tx.execute(sql.create_schema.as_str()).await?;
        tx.execute(sql.create_migrations_table.as_str()).await?;
        let current: Option<i64> = sqlx::query_scalar(&sql.schema_version)
            .persistent(self.named())
            .fetch_one(&mut *tx)
            .await?;
        let current = current.unwrap_or(0);
        check_schema_version(Some(current), MIGRATIONS)?;
        for (version, migration) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            // Several statements: `execute` on a string without arguments
            // uses the simple query protocol (and, unlike `raw_sql`, keeps
            // the future `Send` inside `tokio::spawn`).
            tx.execute(n.render(migration).as_str()).await?;
            sqlx::query(&sql.record_migration)
                .persistent(self.named())
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Fails if the tables are missing or at a newer migration version than
    /// this crate knows.
    pub(super) async fn check_schema_is_known(&self) -> Result<()> {
        let mut c = self.standalone().await?;
        let found: Option<i64> = match sqlx::query_scalar(&self.inner.sql.schema_version)
            .persistent(self.named())
            .fetch_one(c.conn())
            .await
        {
            Ok(v) => v,
            // No tables at all: never migrated.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => None,
            Err(e) => return Err(e.into()),
        };
        c.finish().await?;
        check_schema_current(found, MIGRATIONS)
    }
}
