//! A fresh PostgreSQL database per test.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

pub const START_PG: &str =
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

pub fn admin_url() -> String {
    std::env::var("OUTBOX_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database created for one test and dropped by [`TestDb::drop`].
pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::with_options(PgPoolOptions::new().max_connections(20)).await
    }

    pub async fn with_options(options: PgPoolOptions) -> Self {
        let admin: PgConnectOptions = admin_url().parse().expect("OUTBOX_TEST_PG is a URL");
        let mut conn = admin.connect().await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {} ({e}). Start it with: {START_PG}",
                admin_url()
            )
        });
        let name = format!("outbox_test_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let pool = options
            .connect_with(admin.database(&name))
            .await
            .expect("connect to test database");
        Self { name, pool }
    }

    /// Connection options for this database (for other pools or processes).
    pub fn options(&self) -> PgConnectOptions {
        let admin: PgConnectOptions = admin_url().parse().unwrap();
        admin.database(&self.name)
    }

    /// A pool of its own to this database, as another process would open:
    /// only what PostgreSQL carries (a NOTIFY) reaches a relay on `pool`.
    pub async fn other_process_pool(&self) -> PgPool {
        PgPoolOptions::new()
            .connect_with(self.options())
            .await
            .expect("connect a second pool")
    }

    /// The URL of this database.
    pub fn url(&self) -> String {
        let base = admin_url();
        let cut = base.rfind('/').expect("URL has a path");
        format!("{}/{}", &base[..cut], self.name)
    }

    pub async fn drop(self) {
        self.pool.close().await;
        let admin: PgConnectOptions = admin_url().parse().unwrap();
        if let Ok(mut conn) = admin.connect().await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}
