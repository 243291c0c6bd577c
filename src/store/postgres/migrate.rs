//! Migrations on PostgreSQL: the runner that applies a [`MigrationSet`]
//! (the outbox's here, the inbox's in `inbox/postgres.rs`), the outbox's
//! embedded migrations, [`PgOutbox::migrate`] and the check that the tables
//! are at the version this build needs.

use sqlx::postgres::PgPool;
use sqlx::Executor;

use super::locks::fnv1a32;
use super::{begin, PgOutbox, Statements};
use crate::error::{Error, Result};
use crate::store::{check_schema_current, MigrationSet};

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
    (
        6,
        include_str!("../../../migrations/postgres/0006_parked.sql"),
    ),
    (
        7,
        include_str!("../../../migrations/postgres/0007_relay_publish_error.sql"),
    ),
    (
        8,
        include_str!("../../../migrations/postgres/0008_ready_floor.sql"),
    ),
    (
        9,
        include_str!("../../../migrations/postgres/0009_key_sequences_fillfactor.sql"),
    ),
    (
        10,
        include_str!("../../../migrations/postgres/0010_bucket_index.sql"),
    ),
    (
        11,
        include_str!("../../../migrations/postgres/0011_key_sequence_log.sql"),
    ),
];

const LOCK: &str = include_str!("sql/migrations/lock.sql");
const CREATE_SCHEMA: &str = include_str!("sql/migrations/create_schema.sql");
const CREATE_TABLE: &str = include_str!("sql/migrations/create_table.sql");
const VERSION: &str = include_str!("sql/migrations/version.sql");
const RECORD: &str = include_str!("sql/migrations/record.sql");

/// Creates or upgrades the schema and tables of `set`, in one transaction
/// serialized across processes by an advisory lock derived from the name
/// of its table of versions. A schema created by another program at the
/// same moment (`CREATE SCHEMA IF NOT EXISTS` is not safe against that)
/// fails an attempt; the next one finds it.
pub(crate) async fn apply(
    pool: &PgPool,
    statements: Statements,
    set: &MigrationSet<'_>,
) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match apply_once(pool, statements, set).await {
            Err(Error::Database(sqlx::Error::Database(e)))
                if attempt < 5 && matches!(e.code().as_deref(), Some("23505" | "42P06")) =>
            {
                continue
            }
            other => return other,
        }
    }
}

async fn apply_once(pool: &PgPool, statements: Statements, set: &MigrationSet<'_>) -> Result<()> {
    let named = statements.named();
    let mut tx = begin(pool, None).await?;
    sqlx::query(&set.bookkeeping(LOCK))
        .persistent(named)
        .bind(fnv1a32(set.table.as_bytes()))
        .execute(&mut *tx)
        .await?;
    tx.execute(set.bookkeeping(CREATE_SCHEMA).as_str()).await?;
    tx.execute(set.bookkeeping(CREATE_TABLE).as_str()).await?;
    set.apply_pending::<sqlx::Postgres>(&mut tx, VERSION, RECORD, named)
        .await?;
    tx.commit().await?;
    Ok(())
}

impl PgOutbox {
    fn migrations(&self) -> MigrationSet<'_> {
        let n = &self.inner.names;
        MigrationSet::new(MIGRATIONS, &n.migrations, n.schema.as_deref(), n)
    }

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
        apply(&self.inner.pool, self.inner.statements, &self.migrations()).await
    }

    /// Fails if the tables are missing or at a newer migration version than
    /// this crate knows.
    pub(super) async fn check_schema_is_known(&self) -> Result<()> {
        let version = self.migrations().bookkeeping(VERSION);
        let found: Option<i64> = match self.on_relay().one(sqlx::query_scalar(&version)).await {
            Ok(v) => v,
            // No tables at all: never migrated.
            Err(Error::Database(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some("42P01") =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        check_schema_current(found, MIGRATIONS)
    }
}
