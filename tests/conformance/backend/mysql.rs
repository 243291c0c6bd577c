//! The MySQL/MariaDB backend of the suite.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use outbox::export::Cursor;
use outbox::{MessageId, MySqlInbox, MySqlOutbox, MySqlOutboxBuilder, Receipt, Result};
use sqlx::mysql::{
    MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlPoolOptions,
};
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

use super::{Backend, Pool, Tx};
use crate::consumer_backend::{ConsumerBackend, ExportBackend, InboxBackend};

outbox_builder!(MySqlOutboxBuilder, MySqlOutbox);
test_outbox!(MySqlOutbox, sqlx::MySql);
test_inbox!(MySqlInbox, sqlx::MySql);

/// The server the databases are created on.
fn admin_url() -> String {
    std::env::var("OUTBOX_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

fn admin_options() -> MySqlConnectOptions {
    admin_url()
        .parse()
        .expect("OUTBOX_TEST_MYSQL is a MySQL URL")
}

/// The admin URL with `database` for its path (its query string kept).
fn database_url(database: &str) -> String {
    let admin = admin_url();
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin.as_str(), None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut url = format!("{}/{database}", &base[..path]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// Whether MySQL aborted the statement's transaction to break a deadlock
/// (`ER_LOCK_DEADLOCK`; InnoDB has rolled the whole transaction back).
fn deadlocked(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|e| e.number() == 1213),
        _ => false,
    }
}

/// MySQL or MariaDB: a database per test on the server at
/// `OUTBOX_TEST_MYSQL`, in the server's default isolation (REPEATABLE
/// READ), as an application's would be.
pub struct MySql {
    pool: MySqlPool,
    url: String,
    /// The database's name when this handle created it; `close` drops it.
    created: Mutex<Option<String>>,
}

impl MySql {
    async fn admin_connection() -> MySqlConnection {
        let options = admin_options();
        let connected = options.connect().await;
        connected.unwrap_or_else(|e| {
            panic!(
                "MariaDB/MySQL is not reachable at {} ({e}); set OUTBOX_TEST_MYSQL to its URL",
                admin_url()
            )
        })
    }

    /// Drops database `name`, after ending the connections still in it.
    async fn drop_database(name: &str) {
        let options = admin_options();
        let Ok(mut admin) = options.connect().await else {
            return;
        };
        // A relay process killed (or frozen) by a scenario may have left a
        // connection in a transaction, whose metadata locks would keep
        // DROP DATABASE waiting: end them first, as PostgreSQL's
        // `WITH (FORCE)` does.
        let others: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT CAST(id AS SIGNED) FROM information_schema.processlist \
             WHERE db = '{name}' AND id <> CONNECTION_ID()"
        ))
        .fetch_all(&mut admin)
        .await
        .unwrap_or_default();
        for id in others {
            let _ = sqlx::query(&format!("KILL CONNECTION {id}"))
                .execute(&mut admin)
                .await;
        }
        // Should a lock still be held, give up rather than wait the
        // server's default of a day or a year.
        let _ = sqlx::query("SET SESSION lock_wait_timeout = 60")
            .execute(&mut admin)
            .await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute(&mut admin)
            .await;
        admin.close().await.ok();
    }
}

#[async_trait]
impl Backend for MySql {
    const NAME: &'static str = "mysql";
    const BUCKETS: usize = 64;

    type Db = sqlx::MySql;
    type Outbox = MySqlOutbox;
    type Builder = MySqlOutboxBuilder;
    const NOW: &'static str = "UTC_TIMESTAMP(6)";
    const DEFAULT_PREFIX: &'static str = "outbox_";
    const QUALIFY: [&'static str; 2] = ["`", "`"];
    const UUID: &'static str = "BINARY(16)";
    const SERIAL: &'static str = "BIGINT AUTO_INCREMENT PRIMARY KEY";
    // Cast: some servers describe information_schema's names as binary
    // strings.
    const TABLES: &'static str = "SELECT CAST(table_name AS CHAR) \
        FROM information_schema.tables \
        WHERE table_schema = DATABASE() AND table_name <> 'candidates' ORDER BY 1";

    fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    async fn create_bare(pool: Pool) -> Self {
        let options = pool.options(8, 10);
        let name = format!("outbox_test_{}", Uuid::now_v7().simple());
        let mut admin = Self::admin_connection().await;
        // utf8mb4, the default of MySQL 8 and of current MariaDB: the
        // scenarios' own text columns take whatever they are given.
        sqlx::query(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        admin.close().await.ok();
        let pool = options
            .connect_with(admin_options().database(&name))
            .await
            .expect("connect to the test database");
        MySql {
            pool,
            url: database_url(&name),
            created: Mutex::new(Some(name)),
        }
    }

    fn location(&self) -> String {
        self.url.clone()
    }

    async fn open(location: &str) -> Self {
        let options: MySqlConnectOptions = location.parse().expect("a MySQL URL");
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap_or_else(|e| panic!("MariaDB/MySQL: cannot open {location} ({e})"));
        MySql {
            pool,
            url: location.to_owned(),
            created: Mutex::new(None),
        }
    }

    async fn close(&self) {
        let created = self.created.lock().unwrap().take();
        self.pool.close().await;
        if let Some(name) = created {
            Self::drop_database(&name).await;
        }
    }

    fn outbox_builder(&self) -> MySqlOutboxBuilder {
        MySqlOutbox::builder(self.pool.clone())
    }

    async fn backdate_published(&self, by: Duration) {
        let micros = by.as_micros();
        self.execute(&format!(
            "UPDATE `outbox_published` \
             SET published_at = published_at - INTERVAL {micros} MICROSECOND"
        ))
        .await;
    }

    fn is_deadlock(error: &outbox::Error) -> bool {
        match error {
            outbox::Error::Database(e) => deadlocked(e),
            _ => false,
        }
    }
}

impl ConsumerBackend for MySql {}

#[async_trait]
impl InboxBackend for MySql {
    type Inbox = MySqlInbox;

    fn inbox(&self) -> MySqlInbox {
        MySqlInbox::new(self.pool.clone())
    }

    async fn receive_id_autocommit(&self, consumer: &str, id: MessageId) -> Result<Receipt> {
        // A connection of its own, in autocommit.
        let mut conn = self.pool.acquire().await?;
        let receipt = self.inbox().receive_id(&mut *conn, consumer, id).await?;
        Ok(receipt)
    }

    fn build_inbox(&self, schema: Option<&str>, prefix: &str) -> Result<MySqlInbox> {
        assert!(
            schema.is_none(),
            "MySQL's schemas are its databases: the inbox takes a table prefix only"
        );
        MySqlInbox::builder(self.pool.clone())
            .table_prefix(prefix)
            .build()
    }

    async fn inbox_relations(&self, schema: Option<&str>, prefix: &str) -> i64 {
        assert!(
            schema.is_none(),
            "MySQL's schemas are its databases: the inbox takes a table prefix only"
        );
        let tables = self
            .count(&format!(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name IN \
                 ('{prefix}inbox_messages', '{prefix}inbox_keys', '{prefix}inbox_migrations')"
            ))
            .await;
        // An index's name is its table's own: one row per indexed column.
        let indexes = self
            .count(&format!(
                "SELECT count(DISTINCT index_name) FROM information_schema.statistics \
                 WHERE table_schema = DATABASE() AND table_name = '{prefix}inbox_messages' \
                 AND index_name = '{prefix}inbox_received_idx'"
            ))
            .await;
        tables + indexes
    }
}

#[async_trait]
impl ExportBackend for MySql {
    const INSERT_NEW: [&'static str; 2] = ["INSERT IGNORE INTO", ""];
    const REPLACE_DOC: &'static str = "ON DUPLICATE KEY UPDATE doc = VALUES(doc)";

    async fn begin_snapshot(&self) -> Tx<Self> {
        // REPEATABLE READ (the server's default) reads one snapshot, taken
        // here rather than at the first read.
        self.pool
            .begin_with("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
            .expect("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    }

    fn foreign_cursor() -> Cursor {
        "pg1|||0".parse().expect("a PostgreSQL cursor")
    }

    async fn begin_write(&self) -> Tx<Self> {
        // Row locks (`FOR UPDATE`) order the writers of one entity.
        self.begin().await
    }

    fn lost_insert_race(error: &sqlx::Error) -> bool {
        // Under REPEATABLE READ the locking read of a missing key locked
        // the gap it goes in; two writers inserting into one gap
        // deadlock, and InnoDB rolls one back: that one inserted
        // nothing, as if the other's row had come first.
        deadlocked(error)
    }
}
