//! The MySQL/MariaDB backend of the suite.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use outbox::export::Cursor;
use outbox::{MessageId, MySqlInbox, MySqlOutbox, OutboxMessage, Receipt, Result};
use serde_json::Value;
use sqlx::mysql::{
    MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlPoolOptions,
};
use sqlx::{ConnectOptions, Connection, Row};
use uuid::Uuid;

use super::{Backend, Delivery, Pool, Tx};
use crate::consumer_backend::{parse_doc, ConsumerBackend, ExportBackend, InboxBackend};

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
    const NOW: &'static str = "UTC_TIMESTAMP(6)";
    const DEFAULT_PREFIX: &'static str = "outbox_";

    fn table(prefix: &str, table: &str) -> String {
        format!("`{prefix}{table}`")
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(&self.pool).await.unwrap();
    }

    async fn insert_block(&self, key: &str, position: i64) {
        sqlx::query(
            "INSERT INTO `outbox_blocked_keys` (partition_key, seq, since) \
             VALUES (?, ?, UTC_TIMESTAMP(6))",
        )
        .bind(key.as_bytes())
        .bind(position)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn create_bare(pool: Pool) -> Self {
        let options = match pool {
            Pool::Default => MySqlPoolOptions::new().max_connections(8),
            Pool::Connections(n) => MySqlPoolOptions::new().max_connections(n),
            Pool::PausedTime => MySqlPoolOptions::new()
                .max_connections(10)
                .min_connections(4)
                .acquire_timeout(Duration::from_secs(365 * 24 * 3600))
                .idle_timeout(None)
                .max_lifetime(None)
                .test_before_acquire(false),
        };
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

    fn outbox(&self) -> MySqlOutbox {
        MySqlOutbox::new(self.pool.clone())
    }

    fn outbox_with_prefix(&self, prefix: &str) -> outbox::Result<MySqlOutbox> {
        MySqlOutbox::builder(self.pool.clone())
            .table_prefix(prefix)
            .build()
    }

    fn outbox_with_payload_limit(&self, limit: usize) -> outbox::Result<MySqlOutbox> {
        MySqlOutbox::builder(self.pool.clone())
            .max_payload_bytes(limit)
            .build()
    }

    async fn begin(&self) -> Tx<Self> {
        self.pool.begin().await.unwrap()
    }

    async fn insert_candidate(&self, tx: &mut Tx<Self>, id: i64, status: &str) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO candidates VALUES (?, ?)")
            .bind(id)
            .bind(status)
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    async fn tables(&self) -> Vec<String> {
        // Cast: some servers describe information_schema's names as
        // binary strings.
        sqlx::query_scalar(
            "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name <> 'candidates' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn backdate_published(&self, by: Duration) {
        sqlx::query(
            "UPDATE `outbox_published` SET published_at = published_at - INTERVAL ? MICROSECOND",
        )
        .bind(by.as_micros() as i64)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn create_key_counters(&self, keys: usize) {
        // `key` is a reserved word in MySQL: the column is `k`.
        sqlx::query("CREATE TABLE key_counters (k VARCHAR(255) PRIMARY KEY, n BIGINT NOT NULL)")
            .execute(&self.pool)
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE key_log (k VARCHAR(255) NOT NULL, n BIGINT NOT NULL, \
             msg BINARY(16) NOT NULL, PRIMARY KEY (k, n))",
        )
        .execute(&self.pool)
        .await
        .unwrap();
        if keys == 0 {
            return;
        }
        let rows = vec!["(?, 0)"; keys].join(", ");
        let sql = format!("INSERT INTO key_counters (k, n) VALUES {rows}");
        let mut q = sqlx::query(&sql);
        for i in 0..keys {
            q = q.bind(format!("key-{i}"));
        }
        q.execute(&self.pool).await.unwrap();
    }

    async fn lock_key(&self, tx: &mut Tx<Self>, key: &str) -> sqlx::Result<()> {
        sqlx::query("SELECT n FROM key_counters WHERE k = ? FOR UPDATE")
            .bind(key)
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    async fn log_key(&self, tx: &mut Tx<Self>, key: &str, message: MessageId) -> sqlx::Result<()> {
        // No RETURNING on UPDATE: the count is read back in the same
        // transaction, which holds the row's lock since the update.
        sqlx::query("UPDATE key_counters SET n = n + 1 WHERE k = ?")
            .bind(key)
            .execute(&mut **tx)
            .await?;
        let n: i64 = sqlx::query_scalar("SELECT n FROM key_counters WHERE k = ?")
            .bind(key)
            .fetch_one(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO key_log (k, n, msg) VALUES (?, ?, ?)")
            .bind(key)
            .bind(n)
            .bind(message.as_uuid())
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    async fn key_log(&self) -> Vec<(String, i64, Uuid)> {
        sqlx::query_as("SELECT k, n, msg FROM key_log ORDER BY k, n")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    fn is_deadlock(error: &outbox::Error) -> bool {
        match error {
            outbox::Error::Database(e) => deadlocked(e),
            _ => false,
        }
    }

    async fn create_received(&self) {
        sqlx::query(
            "CREATE TABLE received (seq BIGINT AUTO_INCREMENT PRIMARY KEY, \
             id BINARY(16) NOT NULL, k VARCHAR(255) NOT NULL, n BIGINT NOT NULL, \
             ks BIGINT NOT NULL, relay INT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn record(&self, deliveries: &[Delivery]) -> sqlx::Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        // Five parameters a row: a batch of 200 stays far below MySQL's
        // limit of 65,535 bound parameters.
        let rows = vec!["(?, ?, ?, ?, ?)"; deliveries.len()].join(", ");
        let sql = format!("INSERT INTO received (id, k, n, ks, relay) VALUES {rows}");
        let mut q = sqlx::query(&sql);
        for d in deliveries {
            q = q.bind(d.id).bind(&d.key).bind(d.n).bind(d.ks).bind(d.relay);
        }
        q.execute(&self.pool).await.map(drop)
    }

    async fn deliveries(&self) -> Vec<Delivery> {
        sqlx::query("SELECT id, k, n, ks, relay FROM received ORDER BY seq")
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| Delivery {
                id: r.get(0),
                key: r.get(1),
                n: r.get(2),
                ks: r.get(3),
                relay: r.get(4),
            })
            .collect()
    }
}

#[async_trait]
impl ConsumerBackend for MySql {
    async fn select_one(tx: &mut Tx<Self>) -> i32 {
        sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut **tx)
            .await
            .expect("SELECT 1")
    }
}

#[async_trait]
impl InboxBackend for MySql {
    type Inbox = MySqlInbox;

    fn inbox(&self) -> MySqlInbox {
        MySqlInbox::new(self.pool.clone())
    }

    fn inbox_table(table: &str) -> String {
        format!("`outbox_{table}`")
    }

    async fn receive_id_autocommit(&self, consumer: &str, id: MessageId) -> Result<Receipt> {
        // A connection of its own, in autocommit.
        let mut conn = self.pool.acquire().await?;
        let receipt = self.inbox().receive_id(&mut *conn, consumer, id).await?;
        Ok(receipt)
    }

    async fn record_inbox_version(&self, version: i64) {
        sqlx::query(
            "INSERT INTO `outbox_inbox_migrations` (version, applied_at) \
             VALUES (?, UTC_TIMESTAMP(6))",
        )
        .bind(version)
        .execute(&self.pool)
        .await
        .expect("record an inbox version");
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

    async fn create_effects_table(&self) {
        sqlx::query(
            "CREATE TABLE effects (message_id VARCHAR(64) NOT NULL, \
             consumer VARCHAR(255) NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .expect("create the effects table");
    }

    async fn record_effect(tx: &mut Tx<Self>, message: &OutboxMessage, consumer: &str) {
        sqlx::query("INSERT INTO effects (message_id, consumer) VALUES (?, ?)")
            .bind(message.id().to_string())
            .bind(consumer)
            .execute(&mut **tx)
            .await
            .expect("record an effect");
    }
}

#[async_trait]
impl ExportBackend for MySql {
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

    async fn create_entity_table(&self, table: &str) {
        sqlx::query(&format!(
            "CREATE TABLE `{table}` (k VARCHAR(255) PRIMARY KEY, doc LONGTEXT NOT NULL)"
        ))
        .execute(&self.pool)
        .await
        .expect("create an entity table");
    }

    async fn begin_write(&self) -> Tx<Self> {
        // Row locks (`FOR UPDATE`) order the writers of one entity.
        self.begin().await
    }

    async fn entity_for_update(tx: &mut Tx<Self>, table: &str, key: &str) -> Option<Value> {
        let doc: Option<String> =
            sqlx::query_scalar(&format!("SELECT doc FROM `{table}` WHERE k = ? FOR UPDATE"))
                .bind(key)
                .fetch_optional(&mut **tx)
                .await
                .expect("read an entity");
        doc.as_deref().map(parse_doc)
    }

    async fn insert_entity(tx: &mut Tx<Self>, table: &str, key: &str, doc: &Value) -> bool {
        let inserted = sqlx::query(&format!(
            "INSERT IGNORE INTO `{table}` (k, doc) VALUES (?, ?)"
        ))
        .bind(key)
        .bind(doc.to_string())
        .execute(&mut **tx)
        .await;
        match inserted {
            Ok(done) => done.rows_affected() == 1,
            // Under REPEATABLE READ the locking read of a missing key locked
            // the gap it goes in; two writers inserting into one gap
            // deadlock, and InnoDB rolls one back: that one inserted
            // nothing, as if the other's row had come first.
            Err(e) if deadlocked(&e) => false,
            Err(e) => panic!("insert an entity: {e}"),
        }
    }

    async fn put_entity(tx: &mut Tx<Self>, table: &str, key: &str, doc: &Value) {
        sqlx::query(&format!(
            "INSERT INTO `{table}` (k, doc) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE doc = VALUES(doc)"
        ))
        .bind(key)
        .bind(doc.to_string())
        .execute(&mut **tx)
        .await
        .expect("put an entity");
    }

    async fn delete_entity(tx: &mut Tx<Self>, table: &str, key: &str) {
        sqlx::query(&format!("DELETE FROM `{table}` WHERE k = ?"))
            .bind(key)
            .execute(&mut **tx)
            .await
            .expect("delete an entity");
    }

    async fn entities(tx: &mut Tx<Self>, table: &str) -> HashMap<String, Value> {
        let rows: Vec<(String, String)> = sqlx::query_as(&format!("SELECT k, doc FROM `{table}`"))
            .fetch_all(&mut **tx)
            .await
            .expect("read the entities");
        rows.into_iter().map(|(k, d)| (k, parse_doc(&d))).collect()
    }
}
