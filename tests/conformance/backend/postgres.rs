//! The PostgreSQL backend of the suite.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use outbox::export::Cursor;
use outbox::{MessageId, OutboxMessage, PgInbox, PgOutbox, Receipt, Result};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;
use uuid::Uuid;

use super::{Backend, Delivery, Pool, Tx};
use crate::consumer_backend::{parse_doc, ConsumerBackend, ExportBackend, InboxBackend};
use crate::support::pg::TestDb;

test_outbox!(PgOutbox, sqlx::Postgres);
test_inbox!(PgInbox, sqlx::Postgres);

/// How the outbox reaches the test database: directly, or through
/// PgBouncer (started by `.ci/run` from `.ci/pgbouncer/`).
pub trait Route: Send + Sync + 'static {
    /// The backend's name in test names and to child processes.
    const NAME: &'static str;
    /// PgBouncer's port, if the outbox goes through it.
    const POOLER_PORT: Option<u16>;
    /// Whether that pooler runs in transaction mode.
    const TRANSACTION_POOLING: bool;
}

/// Straight to the server.
pub struct Direct;
impl Route for Direct {
    const NAME: &'static str = "postgres";
    const POOLER_PORT: Option<u16> = None;
    const TRANSACTION_POOLING: bool = false;
}

/// Through PgBouncer in session mode (127.0.0.1:6432).
pub struct BouncerSession;
impl Route for BouncerSession {
    const NAME: &'static str = "pgbouncer_session";
    const POOLER_PORT: Option<u16> = Some(6432);
    const TRANSACTION_POOLING: bool = false;
}

/// Through PgBouncer in transaction mode (127.0.0.1:6433).
pub struct BouncerTransaction;
impl Route for BouncerTransaction {
    const NAME: &'static str = "pgbouncer_transaction";
    const POOLER_PORT: Option<u16> = Some(6433);
    const TRANSACTION_POOLING: bool = true;
}

/// PostgreSQL directly.
pub type Postgres = PostgresVia<Direct>;
/// PostgreSQL through PgBouncer in session mode.
pub type PgBouncerSession = PostgresVia<BouncerSession>;
/// PostgreSQL through PgBouncer in transaction mode.
pub type PgBouncerTransaction = PostgresVia<BouncerTransaction>;

/// Connect options that go through the route's pooler, if it has one.
fn routed<R: Route>(options: PgConnectOptions) -> PgConnectOptions {
    match R::POOLER_PORT {
        Some(port) => options.port(port),
        None => options,
    }
}

/// PostgreSQL: a database per test on the server at `OUTBOX_TEST_PG`. The
/// outbox and the scenarios' transactions use `app`, which goes through the
/// route's pooler; the scenarios' own bookkeeping reads use `pool`, a
/// direct connection.
pub struct PostgresVia<R: Route> {
    pool: PgPool,
    app: PgPool,
    url: String,
    /// Set when this handle created the database, which `close` drops.
    created: Mutex<Option<TestDb>>,
    route: std::marker::PhantomData<R>,
}

impl<R: Route> PostgresVia<R> {
    /// A pool like `options` describes, through the route's pooler.
    async fn app_pool(options: PgPoolOptions, direct: &PgConnectOptions) -> PgPool {
        let target = routed::<R>(direct.clone());
        options.connect_with(target).await.unwrap_or_else(|e| {
            panic!(
                "{} is not reachable ({e}): .ci/run starts PgBouncer from .ci/pgbouncer/",
                R::NAME
            )
        })
    }

    fn builder(&self) -> outbox::PgOutboxBuilder {
        PgOutbox::builder(self.app.clone()).transaction_pooling(R::TRANSACTION_POOLING)
    }
}

#[async_trait]
impl<R: Route> Backend for PostgresVia<R> {
    const NAME: &'static str = R::NAME;
    const BUCKETS: usize = 64;

    type Db = sqlx::Postgres;
    type Outbox = PgOutbox;
    const NOW: &'static str = "now()";
    const DEFAULT_PREFIX: &'static str = "";

    fn table(prefix: &str, table: &str) -> String {
        format!("outbox.{prefix}{table}")
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(&self.pool).await.unwrap();
    }

    async fn insert_block(&self, key: &str, position: i64) {
        sqlx::query("INSERT INTO outbox.blocked_keys (partition_key, seq) VALUES ($1, $2)")
            .bind(key)
            .bind(position)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    async fn create_bare(pool: Pool) -> Self {
        let options = match pool {
            Pool::Default => PgPoolOptions::new().max_connections(20),
            Pool::Connections(n) => PgPoolOptions::new().max_connections(n),
            Pool::PausedTime => PgPoolOptions::new()
                .max_connections(10)
                .min_connections(4)
                .acquire_timeout(Duration::from_secs(365 * 24 * 3600))
                .idle_timeout(None)
                .max_lifetime(None)
                .test_before_acquire(false),
        };
        let db = TestDb::with_options(options.clone()).await;
        let app = match R::POOLER_PORT {
            Some(_) => Self::app_pool(options, &db.options()).await,
            None => db.pool.clone(),
        };
        PostgresVia {
            pool: db.pool.clone(),
            app,
            url: db.url(),
            created: Mutex::new(Some(db)),
            route: std::marker::PhantomData,
        }
    }

    fn location(&self) -> String {
        self.url.clone()
    }

    async fn open(location: &str) -> Self {
        let options: PgConnectOptions = location.parse().expect("a PostgreSQL URL");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .expect("connect to the test database");
        let app = match R::POOLER_PORT {
            Some(_) => Self::app_pool(PgPoolOptions::new().max_connections(4), &options).await,
            None => pool.clone(),
        };
        PostgresVia {
            pool,
            app,
            url: location.to_owned(),
            created: Mutex::new(None),
            route: std::marker::PhantomData,
        }
    }

    async fn close(&self) {
        let created = self.created.lock().unwrap().take();
        self.app.close().await;
        match created {
            Some(db) => db.drop().await,
            None => self.pool.close().await,
        }
    }

    fn outbox(&self) -> PgOutbox {
        self.builder().build().unwrap()
    }

    fn outbox_with_prefix(&self, prefix: &str) -> outbox::Result<PgOutbox> {
        self.builder().table_prefix(prefix).build()
    }

    fn outbox_with_payload_limit(&self, limit: usize) -> outbox::Result<PgOutbox> {
        self.builder().max_payload_bytes(limit).build()
    }

    async fn begin(&self) -> Tx<Self> {
        self.app.begin().await.unwrap()
    }

    async fn insert_candidate(&self, tx: &mut Tx<Self>, id: i64, status: &str) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO candidates VALUES ($1, $2)")
            .persistent(false)
            .bind(id)
            .bind(status)
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    async fn tables(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'outbox' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn backdate_published(&self, by: Duration) {
        sqlx::query(
            "UPDATE outbox.published SET published_at = published_at - make_interval(secs => $1)",
        )
        .bind(by.as_secs_f64())
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn create_key_counters(&self, keys: usize) {
        sqlx::raw_sql(&format!(
            "CREATE TABLE key_counters (key text PRIMARY KEY, n bigint NOT NULL);
             CREATE TABLE key_log (key text NOT NULL, n bigint NOT NULL, msg uuid NOT NULL,
                                   PRIMARY KEY (key, n));
             INSERT INTO key_counters SELECT 'key-' || g, 0 FROM generate_series(0, {}) g;",
            keys - 1
        ))
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn lock_key(&self, tx: &mut Tx<Self>, key: &str) -> sqlx::Result<()> {
        sqlx::query("SELECT n FROM key_counters WHERE key = $1 FOR UPDATE")
            .persistent(false)
            .bind(key)
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    async fn log_key(&self, tx: &mut Tx<Self>, key: &str, message: MessageId) -> sqlx::Result<()> {
        sqlx::query(
            "WITH c AS (UPDATE key_counters SET n = n + 1 WHERE key = $1 \
             RETURNING n) INSERT INTO key_log SELECT $1, n, $2 FROM c",
        )
        .persistent(false)
        .bind(key)
        .bind(message.as_uuid())
        .execute(&mut **tx)
        .await
        .map(drop)
    }

    async fn key_log(&self) -> Vec<(String, i64, Uuid)> {
        sqlx::query_as("SELECT key, n, msg FROM key_log ORDER BY key, n")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    fn is_deadlock(error: &outbox::Error) -> bool {
        match error {
            outbox::Error::Database(sqlx::Error::Database(d)) => {
                d.code().as_deref() == Some("40P01")
            }
            _ => false,
        }
    }

    async fn create_received(&self) {
        sqlx::query(
            "CREATE TABLE received (seq bigserial PRIMARY KEY, id uuid NOT NULL, \
             key text NOT NULL, n bigint NOT NULL, ks bigint NOT NULL, relay int NOT NULL, \
             at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn record(&self, deliveries: &[Delivery]) -> sqlx::Result<()> {
        let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
        let keys: Vec<&str> = deliveries.iter().map(|d| d.key.as_str()).collect();
        let ns: Vec<i64> = deliveries.iter().map(|d| d.n).collect();
        let kss: Vec<i64> = deliveries.iter().map(|d| d.ks).collect();
        let relays: Vec<i32> = deliveries.iter().map(|d| d.relay).collect();
        sqlx::query(
            "INSERT INTO received (id, key, n, ks, relay) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::int[])",
        )
        .bind(ids)
        .bind(keys)
        .bind(ns)
        .bind(kss)
        .bind(relays)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    async fn deliveries(&self) -> Vec<Delivery> {
        sqlx::query("SELECT id, key, n, ks, relay FROM received ORDER BY seq")
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
impl<R: Route> ConsumerBackend for PostgresVia<R> {
    async fn select_one(tx: &mut Tx<Self>) -> i32 {
        sqlx::query_scalar("SELECT 1")
            .persistent(false)
            .fetch_one(&mut **tx)
            .await
            .expect("SELECT 1")
    }
}

#[async_trait]
impl<R: Route> InboxBackend for PostgresVia<R> {
    type Inbox = PgInbox;

    fn inbox(&self) -> PgInbox {
        PgInbox::builder(self.app.clone())
            .transaction_pooling(R::TRANSACTION_POOLING)
            .build()
            .expect("default names")
    }

    fn inbox_table(table: &str) -> String {
        format!("outbox.{table}")
    }

    async fn receive_id_autocommit(&self, consumer: &str, id: MessageId) -> Result<Receipt> {
        if R::TRANSACTION_POOLING {
            // Behind transaction pooling every statement runs in a
            // transaction (see the README): one of its own here.
            let mut tx = self.app.begin().await?;
            let receipt = self.inbox().receive_id(&mut *tx, consumer, id).await?;
            tx.commit().await?;
            return Ok(receipt);
        }
        self.inbox().receive_id(&self.app, consumer, id).await
    }

    async fn record_inbox_version(&self, version: i64) {
        sqlx::query("INSERT INTO outbox.inbox_migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&self.pool)
            .await
            .expect("record an inbox version");
    }

    fn build_inbox(&self, schema: Option<&str>, prefix: &str) -> Result<PgInbox> {
        let builder = PgInbox::builder(self.app.clone())
            .transaction_pooling(R::TRANSACTION_POOLING)
            .table_prefix(prefix);
        match schema {
            Some(schema) => builder.schema(schema).build(),
            None => builder.build(),
        }
    }

    async fn inbox_relations(&self, schema: Option<&str>, prefix: &str) -> i64 {
        let schema = schema.unwrap_or("outbox");
        self.count(&format!(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = '{schema}' AND c.relname IN ('{prefix}inbox_messages', \
             '{prefix}inbox_keys', '{prefix}inbox_migrations', '{prefix}inbox_received_idx')"
        ))
        .await
    }

    async fn create_effects_table(&self) {
        sqlx::query("CREATE TABLE effects (message_id uuid NOT NULL, consumer text NOT NULL)")
            .execute(&self.pool)
            .await
            .expect("create the effects table");
    }

    async fn record_effect(tx: &mut Tx<Self>, message: &OutboxMessage, consumer: &str) {
        sqlx::query("INSERT INTO effects VALUES ($1, $2)")
            .persistent(false)
            .bind(message.id().as_uuid())
            .bind(consumer)
            .execute(&mut **tx)
            .await
            .expect("record an effect");
    }
}

#[async_trait]
impl<R: Route> ExportBackend for PostgresVia<R> {
    async fn begin_snapshot(&self) -> Tx<Self> {
        let mut tx = self.begin().await;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .persistent(false)
            .execute(&mut *tx)
            .await
            .expect("REPEATABLE READ");
        tx
    }

    fn foreign_cursor() -> Cursor {
        "sq1|5".parse().expect("a SQLite cursor")
    }

    async fn create_entity_table(&self, table: &str) {
        sqlx::query(&format!(
            "CREATE TABLE {table} (key text PRIMARY KEY, doc jsonb NOT NULL)"
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
        let doc: Option<String> = sqlx::query_scalar(&format!(
            "SELECT doc::text FROM {table} WHERE key = $1 FOR UPDATE"
        ))
        .persistent(false)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await
        .expect("read an entity");
        doc.as_deref().map(parse_doc)
    }

    async fn insert_entity(tx: &mut Tx<Self>, table: &str, key: &str, doc: &Value) -> bool {
        sqlx::query(&format!(
            "INSERT INTO {table} (key, doc) VALUES ($1, $2::jsonb) ON CONFLICT DO NOTHING"
        ))
        .persistent(false)
        .bind(key)
        .bind(doc.to_string())
        .execute(&mut **tx)
        .await
        .expect("insert an entity")
        .rows_affected()
            == 1
    }

    async fn put_entity(tx: &mut Tx<Self>, table: &str, key: &str, doc: &Value) {
        sqlx::query(&format!(
            "INSERT INTO {table} (key, doc) VALUES ($1, $2::jsonb) \
             ON CONFLICT (key) DO UPDATE SET doc = excluded.doc"
        ))
        .persistent(false)
        .bind(key)
        .bind(doc.to_string())
        .execute(&mut **tx)
        .await
        .expect("put an entity");
    }

    async fn delete_entity(tx: &mut Tx<Self>, table: &str, key: &str) {
        sqlx::query(&format!("DELETE FROM {table} WHERE key = $1"))
            .persistent(false)
            .bind(key)
            .execute(&mut **tx)
            .await
            .expect("delete an entity");
    }

    async fn entities(tx: &mut Tx<Self>, table: &str) -> HashMap<String, Value> {
        let rows: Vec<(String, String)> =
            sqlx::query_as(&format!("SELECT key, doc::text FROM {table}"))
                .persistent(false)
                .fetch_all(&mut **tx)
                .await
                .expect("read the entities");
        rows.into_iter().map(|(k, d)| (k, parse_doc(&d))).collect()
    }
}
