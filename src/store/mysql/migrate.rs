//! Migrations on MySQL: the runner that applies a [`MigrationSet`] (the
//! outbox's here, the inbox's in `inbox/mysql.rs`), the server check, the
//! outbox's embedded migrations, [`MySqlOutbox::migrate`] and the check
//! that the tables are at the version this build needs.
//!
//! MySQL commits DDL as it goes, so a migration cannot be one
//! transaction: migrations are serialized across processes by a named
//! lock, each statement of a migration can run again after a failure part
//! way, and a version is recorded once all its statements went through.

use sqlx::mysql::{MySqlConnection, MySqlPool};
use sqlx::Executor;

use super::MySqlOutbox;
use crate::error::{Error, Result};
use crate::store::MigrationSet;

pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../../migrations/mysql/0001_core.sql")),
    (
        2,
        include_str!("../../../migrations/mysql/0002_relay_publish_error.sql"),
    ),
];

const CREATE_TABLE: &str = include_str!("sql/migrations/create_table.sql");
const LOCK: &str = include_str!("sql/migrations/lock.sql");
const UNLOCK: &str = include_str!("sql/migrations/unlock.sql");
pub(super) const VERSION: &str = include_str!("sql/migrations/version.sql");
const RECORD: &str = include_str!("sql/migrations/record.sql");

/// What the statements need of the server: `SKIP LOCKED`, `JSON_TABLE`
/// and window functions.
const REQUIRED: &str = "MySQL 8.0.4 or later, or MariaDB 10.6 or later";

/// The kind of server: MariaDB can return the rows an insert wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// MySQL 8.0.4+.
    MySql,
    /// MariaDB 10.6+.
    MariaDb,
}

impl Flavor {
    /// The flavor of the server `conn` is connected to; an unsupported
    /// server is [`Error::UnsupportedDatabase`].
    pub(crate) async fn of(conn: &mut MySqlConnection) -> Result<Flavor> {
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(conn)
            .await?;
        Flavor::parse(&version)
    }

    /// Reads a `VERSION()` string: `10.11.6-MariaDB-0+deb12u1`, `8.0.36`.
    fn parse(version: &str) -> Result<Flavor> {
        let unsupported = || Error::UnsupportedDatabase {
            found: version.to_owned(),
            required: REQUIRED,
        };
        let mut numbers = version
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let major = numbers.next().unwrap_or(0);
        let minor = numbers.next().unwrap_or(0);
        let patch = numbers.next().unwrap_or(0);
        let (flavor, ok) = if version.contains("MariaDB") {
            (Flavor::MariaDb, (major, minor) >= (10, 6))
        } else {
            (Flavor::MySql, (major, minor, patch) >= (8, 0, 4))
        };
        if ok {
            Ok(flavor)
        } else {
            Err(unsupported())
        }
    }
}

/// Creates or upgrades the tables of `set`. Safe to run on every start and
/// from several processes at once: a named lock serializes the runs, and
/// each applies only the versions not recorded yet.
///
/// # Errors
///
/// [`Error::UnsupportedDatabase`] for a server older than
/// [`REQUIRED`] (nothing is changed).
pub(crate) async fn apply(pool: &MySqlPool, set: &MigrationSet<'_>) -> Result<()> {
    let mut conn = pool.acquire().await?;
    Flavor::of(&mut conn).await?;
    let got: Option<i64> = sqlx::query_scalar(&set.bookkeeping(LOCK))
        .bind(set.table)
        .fetch_one(&mut *conn)
        .await?;
    if got != Some(1) {
        return Err(Error::Database(sqlx::Error::Protocol(format!(
            "another process held the migration lock of {} for 60 s",
            set.table
        ))));
    }
    let applied = apply_locked(&mut conn, set).await;
    // A session lock: released here whatever happened, or it would stay
    // with the pooled connection.
    let released = sqlx::query(&set.bookkeeping(UNLOCK))
        .bind(set.table)
        .execute(&mut *conn)
        .await;
    applied?;
    released?;
    Ok(())
}

async fn apply_locked(conn: &mut MySqlConnection, set: &MigrationSet<'_>) -> Result<()> {
    conn.execute(set.bookkeeping(CREATE_TABLE).as_str()).await?;
    set.apply_pending::<sqlx::MySql>(conn, VERSION, RECORD, true)
        .await?;
    Ok(())
}

impl MySqlOutbox {
    /// Creates or upgrades the crate's tables. Safe to run on every start
    /// and from several processes at once (a named lock serializes them).
    ///
    /// MySQL commits each DDL statement on its own, so a migration that
    /// fails part way leaves the statements before the failure applied;
    /// each of them can run again, and the next `migrate()` completes it.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedDatabase`](crate::Error::UnsupportedDatabase)
    /// for a server older than MySQL 8.0.4 or MariaDB 10.6 and
    /// [`Error::SchemaTooNew`](crate::Error::SchemaTooNew) if the tables are
    /// at a newer version than this build of the crate knows (nothing is
    /// changed in either case); [`Error::Database`](crate::Error::Database)
    /// if a statement fails.
    pub async fn migrate(&self) -> Result<()> {
        apply(&self.inner.pool, &self.migrations()).await
    }
}

/// Whether a failed read of the applied version says the table does not
/// exist (never migrated).
pub(super) fn missing_table(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.code().as_deref() == Some("42S02")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_are_read_and_old_ones_refused() {
        assert_eq!(
            Flavor::parse("10.11.6-MariaDB-0+deb12u1").unwrap(),
            Flavor::MariaDb
        );
        assert_eq!(Flavor::parse("10.6.0-MariaDB").unwrap(), Flavor::MariaDb);
        assert_eq!(Flavor::parse("8.0.36").unwrap(), Flavor::MySql);
        assert_eq!(Flavor::parse("8.4.0-commercial").unwrap(), Flavor::MySql);
        for old in ["10.5.23-MariaDB", "5.7.44-log", "8.0.3-rc", "garbage"] {
            assert!(
                matches!(Flavor::parse(old), Err(Error::UnsupportedDatabase { .. })),
                "{old}"
            );
        }
    }
}
