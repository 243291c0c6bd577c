//! The suite's own statements (its business and bookkeeping tables), run
//! the same way on every database, so that the default methods of
//! [`Backend`](super::Backend) and the consumer traits can write each one
//! once. A statement takes `?` for its parameters; PostgreSQL gets them
//! numbered.
//!
//! sqlx's generic executor bounds do not reach through a trait's
//! associated type, so [`SuiteDb`] is implemented once per database by
//! [`suite_db!`] rather than for every `sqlx::Database`.

use async_trait::async_trait;
use sqlx::{Pool, Transaction};
use uuid::Uuid;

use super::Delivery;

/// A value bound to one `?` of a statement.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Int(i64),
    Int32(i32),
    Text(&'a str),
    Uuid(Uuid),
}

/// What the suite runs on a database of its own: its statements take `?`
/// for parameters and panic on errors unless they return a `Result`.
#[async_trait]
pub trait SuiteDb: sqlx::Database {
    /// Runs `sql` with `args` in `tx`; the rows it affected. Not prepared
    /// for reuse: behind PgBouncer in transaction mode the next
    /// transaction may be on another server connection.
    async fn run_in(
        tx: &mut Transaction<'static, Self>,
        sql: &str,
        args: &[Arg<'_>],
    ) -> sqlx::Result<u64>;

    /// Runs `sql` with `args` on `pool`.
    async fn run(pool: &Pool<Self>, sql: &str, args: &[Arg<'_>]) -> sqlx::Result<()>;

    /// Runs `sql`, one statement or several, without parameters.
    async fn raw(pool: &Pool<Self>, sql: &str);

    /// The one integer `sql` returns.
    async fn int(pool: &Pool<Self>, sql: &str) -> i64;

    /// `SELECT 1` in `tx` (an `INT`, not a `BIGINT`).
    async fn select_one(tx: &mut Transaction<'static, Self>) -> i32;

    /// The first column of every row of `sql`, as text.
    async fn texts(pool: &Pool<Self>, sql: &str) -> Vec<String>;

    /// The text `sql` with `args` returns in `tx`, if it returns a row.
    async fn text_in(
        tx: &mut Transaction<'static, Self>,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Option<String>;

    /// Every row of `sql` as two texts, in `tx`.
    async fn text_pairs_in(tx: &mut Transaction<'static, Self>, sql: &str)
        -> Vec<(String, String)>;

    /// Rows of (text, integer, UUID).
    async fn key_log(pool: &Pool<Self>, sql: &str) -> Vec<(String, i64, Uuid)>;

    /// Rows of `received` (id, key, n, ks, relay) as deliveries.
    async fn deliveries(pool: &Pool<Self>, sql: &str) -> Vec<Delivery>;
}

/// `sql` with its `?`s numbered `$1`, `$2`, ... when `numbered`.
pub fn placeholders(sql: &str, numbered: bool) -> String {
    if !numbered {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// Binds `args`, in order, to `query`.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for arg in $args {
            q = match *arg {
                Arg::Int(v) => q.bind(v),
                Arg::Int32(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::Uuid(v) => q.bind(v),
            };
        }
        q
    }};
}

/// Implements [`SuiteDb`] for the sqlx database `$db`; `$numbered`: its
/// parameters are `$1`, `$2`, ... rather than `?`.
macro_rules! suite_db {
    ($db:ty, $numbered:expr) => {
        #[async_trait]
        impl SuiteDb for $db {
            async fn run_in(
                tx: &mut Transaction<'static, Self>,
                sql: &str,
                args: &[Arg<'_>],
            ) -> sqlx::Result<u64> {
                let sql = placeholders(sql, $numbered);
                let query = bind_args!(sqlx::query(&sql).persistent(false), args);
                Ok(query.execute(&mut **tx).await?.rows_affected())
            }

            async fn run(pool: &Pool<Self>, sql: &str, args: &[Arg<'_>]) -> sqlx::Result<()> {
                let sql = placeholders(sql, $numbered);
                let query = bind_args!(sqlx::query(&sql), args);
                query.execute(pool).await.map(drop)
            }

            async fn raw(pool: &Pool<Self>, sql: &str) {
                sqlx::raw_sql(sql).execute(pool).await.unwrap();
            }

            async fn int(pool: &Pool<Self>, sql: &str) -> i64 {
                sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
            }

            async fn select_one(tx: &mut Transaction<'static, Self>) -> i32 {
                sqlx::query_scalar("SELECT 1")
                    .persistent(false)
                    .fetch_one(&mut **tx)
                    .await
                    .expect("SELECT 1")
            }

            async fn texts(pool: &Pool<Self>, sql: &str) -> Vec<String> {
                sqlx::query_scalar(sql).fetch_all(pool).await.unwrap()
            }

            async fn text_in(
                tx: &mut Transaction<'static, Self>,
                sql: &str,
                args: &[Arg<'_>],
            ) -> Option<String> {
                let sql = placeholders(sql, $numbered);
                let query = bind_args!(sqlx::query_scalar(&sql).persistent(false), args);
                query.fetch_optional(&mut **tx).await.unwrap()
            }

            async fn text_pairs_in(
                tx: &mut Transaction<'static, Self>,
                sql: &str,
            ) -> Vec<(String, String)> {
                sqlx::query_as(sql)
                    .persistent(false)
                    .fetch_all(&mut **tx)
                    .await
                    .unwrap()
            }

            async fn key_log(pool: &Pool<Self>, sql: &str) -> Vec<(String, i64, Uuid)> {
                sqlx::query_as(sql).fetch_all(pool).await.unwrap()
            }

            async fn deliveries(pool: &Pool<Self>, sql: &str) -> Vec<Delivery> {
                let rows: Vec<(Uuid, String, i64, i64, i32)> =
                    sqlx::query_as(sql).fetch_all(pool).await.unwrap();
                rows.into_iter()
                    .map(|(id, key, n, ks, relay)| Delivery {
                        id,
                        key,
                        n,
                        ks,
                        relay,
                    })
                    .collect()
            }
        }
    };
}

suite_db!(sqlx::Postgres, true);
suite_db!(sqlx::MySql, false);
suite_db!(sqlx::Sqlite, false);
