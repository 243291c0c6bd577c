//! The PostgreSQL backend of the suite.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use outbox::export::Cursor;
use outbox::{MessageId, PgInbox, PgOutbox, PgOutboxBuilder, Receipt, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{Backend, Pool, Tx};
use crate::consumer_backend::{ConsumerBackend, ExportBackend, InboxBackend};
use crate::support::pg::TestDb;

outbox_builder!(PgOutboxBuilder, PgOutbox);
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
    async fn connect_app(options: PgPoolOptions, direct: &PgConnectOptions) -> PgPool {
        let target = routed::<R>(direct.clone());
        options.connect_with(target).await.unwrap_or_else(|e| {
            panic!(
                "{} is not reachable ({e}): .ci/run starts PgBouncer from .ci/pgbouncer/",
                R::NAME
            )
        })
    }
}

#[async_trait]
impl<R: Route> Backend for PostgresVia<R> {
    const NAME: &'static str = R::NAME;
    const BUCKETS: usize = 64;

    type Db = sqlx::Postgres;
    type Outbox = PgOutbox;
    type Builder = PgOutboxBuilder;
    const NOW: &'static str = "now()";
    const DEFAULT_PREFIX: &'static str = "";
    const QUALIFY: [&'static str; 2] = ["outbox.", ""];
    const UUID: &'static str = "uuid";
    const SERIAL: &'static str = "bigserial PRIMARY KEY";
    const TABLES: &'static str =
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'outbox' ORDER BY 1";

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn app_pool(&self) -> &PgPool {
        &self.app
    }

    async fn create_bare(pool: Pool) -> Self {
        let options = pool.options(20, 10);
        let db = TestDb::with_options(options.clone()).await;
        let app = match R::POOLER_PORT {
            Some(_) => Self::connect_app(options, &db.options()).await,
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
            Some(_) => Self::connect_app(PgPoolOptions::new().max_connections(4), &options).await,
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

    fn outbox_builder(&self) -> PgOutboxBuilder {
        PgOutbox::builder(self.app.clone()).transaction_pooling(R::TRANSACTION_POOLING)
    }

    async fn backdate_published(&self, by: Duration) {
        let secs = by.as_secs_f64();
        self.execute(&format!(
            "UPDATE outbox.published \
             SET published_at = published_at - make_interval(secs => {secs})"
        ))
        .await;
    }

    fn is_deadlock(error: &outbox::Error) -> bool {
        match error {
            outbox::Error::Database(sqlx::Error::Database(d)) => {
                d.code().as_deref() == Some("40P01")
            }
            _ => false,
        }
    }
}

impl<R: Route> ConsumerBackend for PostgresVia<R> {}

#[async_trait]
impl<R: Route> InboxBackend for PostgresVia<R> {
    type Inbox = PgInbox;

    fn inbox(&self) -> PgInbox {
        PgInbox::builder(self.app.clone())
            .transaction_pooling(R::TRANSACTION_POOLING)
            .build()
            .expect("default names")
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

    async fn begin_write(&self) -> Tx<Self> {
        // Row locks (`FOR UPDATE`) order the writers of one entity.
        self.begin().await
    }
}
