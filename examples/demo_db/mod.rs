//! The examples' SQLite database: a fresh file in the temp directory,
//! removed again at the end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::SqlitePool;

/// A database file for one run of an example.
pub(crate) struct DemoDb {
    pub(crate) pool: SqlitePool,
    path: PathBuf,
}

impl DemoDb {
    /// Creates `outbox-<name>-<process id>.db` in the temp directory.
    ///
    /// WAL lets the relay read while the service writes; the busy timeout
    /// makes a writer wait for the lock instead of failing at once.
    pub(crate) async fn create(name: &str) -> sqlx::Result<Self> {
        let path = std::env::temp_dir().join(format!("outbox-{name}-{}.db", std::process::id()));
        // A file left by an earlier run that crashed would hold its rows.
        remove_files(&path);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5)),
            )
            .await?;
        Ok(Self { pool, path })
    }

    // Only the quickstart shows where the file is.
    #[allow(dead_code)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the pool and deletes the database with its WAL files.
    pub(crate) async fn remove(self) {
        self.pool.close().await;
        remove_files(&self.path);
    }
}

fn remove_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}
