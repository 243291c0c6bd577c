//! The `outbox` binary, run as a subprocess against real databases
//! (SQLite in a temporary file, the local PostgreSQL and MariaDB), its
//! output and exit codes checked while a relay in this process works.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox::change::Change;
use outbox::sqlx::mysql::MySql;
use outbox::sqlx::pool::PoolOptions;
use outbox::sqlx::postgres::PgPool;
use outbox::sqlx::sqlite::SqlitePoolOptions;
use outbox::sqlx::{Database, Executor, Pool};
use outbox::{
    FnPublisher, MySqlOutbox, NewMessage, OutboxMessage, PgOutbox, PublishError, Relay, Retention,
    SqliteOutbox, Store,
};
use serde_json::Value;
use uuid::Uuid;

/// The binary with the connection arguments, run with no terminal.
struct Cli {
    args: Vec<String>,
}

impl Cli {
    /// The binary on the database at `url`, with the `extra` arguments.
    fn on(url: &str, extra: &[&str]) -> Cli {
        let mut args = vec!["--database-url".to_owned(), url.to_owned()];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Cli { args }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_outbox"))
            .args(&self.args)
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("OUTBOX_CONSOLE_PASSWORD")
            .env_remove("OUTBOX_CONSOLE_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("the outbox binary runs")
    }

    /// Runs a command that must succeed with `code`; its stdout.
    fn expect(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "outbox {args:?}\nstdout: {stdout}\nstderr: {stderr}"
        );
        stdout
    }

    fn json(&self, args: &[&str], code: i32) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.expect(&all, code);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("outbox {args:?}: {e}: {out}"))
    }

    /// `status --json` until `done` holds of it (30 s at most).
    async fn status_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let out = self.run(&["--json", "status"]);
            let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if done(&status) {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "waited 30 s for {what}; last status: {status}, stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The messages each scenario starts with: on ordered topic `orders`, key
/// `a`, a poison message (n = 1) and one behind it; on `mail`, one that
/// goes through; on `junk`, one that always fails.
fn messages() -> Vec<NewMessage> {
    let m = |topic: &str, key: &str, n: i64| {
        NewMessage::json(topic, &serde_json::json!({ "n": n }))
            .unwrap()
            .with_partition_key(key)
    };
    vec![
        m("orders", "a", 1),
        m("orders", "a", 2),
        m("mail", "x", 3),
        m("junk", "j", 99),
    ]
}

/// Two logged changes: an export consumer `crm` reads the first only.
fn changes() -> Vec<Change> {
    vec![
        Change::insert("candidate", "1", &serde_json::json!({"status": "applied"})).unwrap(),
        Change::insert("candidate", "2", &serde_json::json!({"status": "hired"})).unwrap(),
    ]
}

/// Writes [`messages`] and [`changes`] in one transaction of `$pool`, then
/// has consumer `crm` read the first change; `$conn` is the transaction
/// as the backend's methods take it.
macro_rules! seed {
    ($outbox:expr, $pool:expr, |$tx:ident| $conn:expr) => {{
        let mut $tx = $pool.begin().await.unwrap();
        $outbox.enqueue_batch($conn, messages()).await.unwrap();
        for c in changes() {
            $outbox.log_change($conn, &c).await.unwrap();
        }
        $tx.commit().await.unwrap();
        let page = $outbox.changes_since("crm", 1).await.unwrap();
        $outbox
            .commit_cursor("crm", page.next_cursor())
            .await
            .unwrap();
    }};
}

/// The whole operator's session against one outbox holding [`messages`]
/// and [`changes`], with consumer `crm` one change behind.
async fn scenario<S: Store + Clone>(cli: Cli, store: S, sized: bool) {
    // Before any relay: everything pending, and nobody to drain it.
    let status = cli.json(&["status"], 2);
    assert_eq!(status["pending"], 4, "{status}");
    // The table's size where the database tells it (not SQLite).
    assert_eq!(
        status["table_bytes"].as_i64().is_some_and(|b| b > 0),
        sized,
        "{status}"
    );
    assert!(
        status["attention"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("no relay alive")),
        "{status}"
    );
    let consumers = status["export_consumers"].as_array().unwrap();
    assert_eq!(consumers.len(), 1, "{status}");
    assert_eq!(consumers[0]["consumer"], "crm");
    assert_eq!(consumers[0]["behind"], 1);
    let human = cli.expect(&["status"], 2);
    assert!(human.contains("pending       4"), "{human}");
    assert!(human.contains("orders"), "{human}");
    assert!(human.contains("crm"), "{human}");

    let poison = Arc::new(AtomicBool::new(true));
    let publisher = {
        let poison = poison.clone();
        FnPublisher::new(move |m: OutboxMessage| {
            let poison = poison.clone();
            async move {
                let n = m.payload_json::<Value>().unwrap()["n"].as_i64().unwrap();
                if n == 99 || (n == 1 && poison.load(Ordering::SeqCst)) {
                    return Err(PublishError::permanent(format!("poison message {n}")));
                }
                Ok(())
            }
        })
    };
    let relay = Relay::builder(store, publisher)
        .poll_interval(Duration::from_millis(100))
        .retention(Retention::Keep(Duration::from_secs(3600)))
        .spawn()
        .unwrap();

    let status = cli
        .status_until("two dead letters and mail published", |s| {
            s["dead_letters"] == 2 && s["ready"] == 0 && s["pending"] == 1
        })
        .await;
    let blocked = status["blocked_keys"].as_array().unwrap();
    assert!(
        blocked
            .iter()
            .any(|b| b["key"] == "a" && b["held_by"] == "dead"),
        "{status}"
    );
    assert_eq!(status["topics"][0]["topic"], "orders", "{status}");
    assert_eq!(status["topics"][0]["pending"], 1, "{status}");
    let relays = status["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 1, "{status}");
    assert_eq!(relays[0]["alive"], true, "{status}");
    assert!(relays[0]["leases"].as_i64().unwrap() >= 1, "{status}");

    // The dead letters, listed and shown.
    let dead = cli.json(&["dead", "list", "--topic", "orders"], 0);
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["partition_key"], "a");
    assert!(dead[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("poison message 1"));
    let id = dead[0]["id"].as_str().unwrap().to_owned();
    let listing = cli.expect(&["dead", "list"], 0);
    assert!(
        listing.contains(&id) && listing.contains("junk"),
        "{listing}"
    );
    let shown = cli.expect(&["dead", "show", &id], 0);
    assert!(shown.contains("\"n\": 1"), "{shown}");
    assert!(shown.contains("poison message 1"), "{shown}");
    let out = cli.run(&["dead", "show", &Uuid::now_v7().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no dead letter with id"));
    let blocked = cli.expect(&["blocked", "list"], 0);
    assert!(blocked.contains("a dead letter"), "{blocked}");

    // A bulk change without a terminal needs --yes, and changes nothing
    // without it.
    let out = cli.run(&["dead", "replay", "--topic", "orders"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cli.json(&["dead", "list"], 0).as_array().unwrap().len(), 2);

    // Discard the junk, replay the order once it can go through.
    let discarded = cli.json(&["dead", "discard", "--topic", "junk", "--yes"], 0);
    assert_eq!(discarded["discarded"], 1, "{discarded}");
    poison.store(false, Ordering::SeqCst);
    let replayed = cli.json(&["dead", "replay", "--topic", "orders", "--yes"], 0);
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    let status = cli
        .status_until("everything published", |s| {
            s["pending"] == 0 && s["dead_letters"] == 0
        })
        .await;
    assert!(
        status["attention"].as_array().unwrap().is_empty(),
        "{status}"
    );
    cli.expect(&["status"], 0);

    // The published messages, in the order they went out.
    let tail = cli.expect(&["--json", "tail", "--since", "1h", "--count", "3"], 0);
    let tail: Vec<Value> = tail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let topics: Vec<&str> = tail.iter().map(|m| m["topic"].as_str().unwrap()).collect();
    assert_eq!(topics, ["mail", "orders", "orders"], "{tail:?}");
    assert!(tail[1]["position"].as_i64() < tail[2]["position"].as_i64());

    let out = cli.run(&["blocked", "unblock", "a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not blocked"));

    relay.shutdown().await.unwrap();
    let purged = cli.json(&["purge", "--older-than", "0s"], 0);
    assert_eq!(purged["published"], 3, "{purged}");
    let status = cli.json(&["status"], 0);
    assert!(status["relays"].as_array().unwrap().is_empty(), "{status}");
}

/// A directory of its own and the URL of an SQLite file in it, not yet
/// created.
fn sqlite_file() -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("outbox-cli-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}", dir.join("app.db").display());
    (dir, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_on_sqlite() {
    let (dir, url) = sqlite_file();
    let cli = Cli::on(&url, &[]);
    // A file that does not exist yet: status refuses, migrate creates it.
    let out = cli.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outbox migrate"));
    cli.expect(&["migrate"], 0);
    // A usage error is an error (1), not "needs attention" (2).
    let out = cli.run(&["status", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(1));

    let pool = SqlitePoolOptions::new().connect(&url).await.unwrap();
    let outbox = SqliteOutbox::new(pool.clone());
    seed!(outbox, pool, |tx| &mut *tx);
    scenario(cli, outbox, false).await;

    // A cursor that cannot be read costs the consumers' lines, not the
    // status: the rest is shown, and it needs attention.
    outbox::sqlx::query(
        "INSERT INTO outbox_export_cursors (consumer, cursor, updated_at) \
         VALUES ('broken', 'not a cursor', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let cli = Cli::on(&url, &[]);
    let status = cli.json(&["status"], 2);
    assert_eq!(status["pending"], 0, "{status}");
    assert!(
        status["attention"].as_array().unwrap().iter().any(|a| a
            .as_str()
            .unwrap()
            .contains("export consumers could not be read")),
        "{status}"
    );
    pool.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const MYSQL: &str = "mysql://root@127.0.0.1:3306/test";

/// A pool of `max_connections` on the database at the URL in the
/// environment variable `var` (else `default`), and that URL; `server`
/// names it when it is unreachable.
async fn connect<DB: Database>(
    var: &str,
    default: &str,
    server: &str,
    max_connections: u32,
) -> (String, Pool<DB>) {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let pool = PoolOptions::<DB>::new()
        .max_connections(max_connections)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{server} at {url} is unreachable: {e}"));
    (url, pool)
}

/// [`connect`] to the test PostgreSQL (`OUTBOX_TEST_POSTGRES`).
async fn postgres(max_connections: u32) -> (String, PgPool) {
    connect(
        "OUTBOX_TEST_POSTGRES",
        POSTGRES,
        "PostgreSQL",
        max_connections,
    )
    .await
}

/// An outbox in `schema` on `pool`.
fn pg_outbox(pool: &PgPool, schema: &str) -> PgOutbox {
    PgOutbox::builder(pool.clone())
        .schema(schema.to_owned())
        .build()
        .unwrap()
}

/// Drops `what` (`SCHEMA …`, `TABLE …`) on `pool`.
async fn drop_object<DB: Database>(pool: &Pool<DB>, what: &str)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    pool.execute(format!("DROP {what}").as_str()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_on_postgres() {
    let (url, pool) = postgres(4).await;
    let schema = format!("cli_{}", Uuid::now_v7().simple());
    let cli = Cli::on(&url, &["--schema", &schema]);
    // Tables missing: the error says what to do.
    let out = cli.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outbox migrate"));
    cli.expect(&["migrate"], 0);

    let outbox = pg_outbox(&pool, &schema);
    seed!(outbox, pool, |tx| &mut *tx);
    scenario(cli, outbox, true).await;
    drop_object(&pool, &format!("SCHEMA {schema} CASCADE")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_on_mysql() {
    let (url, pool) = connect::<MySql>("OUTBOX_TEST_MYSQL", MYSQL, "MariaDB/MySQL", 4).await;
    let prefix = format!("cli{}_", &Uuid::now_v7().simple().to_string()[20..]);
    let cli = Cli::on(&url, &["--prefix", &prefix]);
    cli.expect(&["migrate"], 0);
    let outbox = MySqlOutbox::builder(pool.clone())
        .table_prefix(prefix.clone())
        .build()
        .unwrap();
    seed!(outbox, pool, |tx| &mut tx);
    scenario(cli, outbox, true).await;
    let tables: Vec<String> = outbox::sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name LIKE ?",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(&pool)
    .await
    .unwrap();
    for t in tables {
        drop_object(&pool, &format!("TABLE `{t}`")).await;
    }
}

/// Through PgBouncer in transaction mode (127.0.0.1:6433, started by
/// `.ci/run`): `--transaction-pooling` keeps statements unnamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_through_pgbouncer_in_transaction_mode() {
    let (_, pool) = postgres(2).await;
    let schema = format!("cli_{}", Uuid::now_v7().simple());
    let outbox = pg_outbox(&pool, &schema);
    outbox.migrate().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_batch(&mut *tx, messages()).await.unwrap();
    tx.commit().await.unwrap();
    let cli = Cli::on(
        "postgres://postgres@127.0.0.1:6433/test",
        &["--schema", &schema, "--transaction-pooling"],
    );
    // Several times: a named statement would meet another session's.
    for _ in 0..5 {
        let status = cli.json(&["status"], 2);
        assert_eq!(status["pending"], 4, "{status}");
        assert_eq!(status["topics"].as_array().unwrap().len(), 3, "{status}");
        let dead = cli.json(&["dead", "list"], 0);
        assert!(dead.as_array().unwrap().is_empty());
    }
    drop_object(&pool, &format!("SCHEMA {schema} CASCADE")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_serves_the_console_on_loopback_unless_given_credentials() {
    let (dir, url) = sqlite_file();
    let cli = Cli::on(&url, &[]);
    cli.expect(&["migrate"], 0);

    // Beyond loopback without credentials: refused before serving.
    let out = cli.run(&["console", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not loopback"), "{said}");
    // A user without a password in the environment is refused.
    let out = cli.run(&["console", "--user", "oncall"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("OUTBOX_CONSOLE_PASSWORD"), "{said}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut console = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .args([
            "--database-url",
            &url,
            "console",
            "--listen",
            &listen,
            "--read-only",
        ])
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the outbox binary runs");
    let http = reqwest::Client::new();
    let start = std::time::Instant::now();
    let overview: Value = loop {
        if let Ok(r) = http
            .get(format!("http://{listen}/api/overview"))
            .send()
            .await
        {
            assert_eq!(r.status(), 200);
            break serde_json::from_str(&r.text().await.unwrap()).unwrap();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the console never answered on {listen}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(overview["read_only"], Value::Bool(true), "{overview}");
    assert_eq!(overview["stats"]["pending"], 0, "{overview}");
    console.kill().unwrap();
    console.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The binary with `args` only: no `--database-url`.
fn bare(args: &[&str]) -> Cli {
    Cli {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    }
}

/// A PostgreSQL database of its own (an outbox in the default schema),
/// its URL and the admin pool that drops it.
async fn pg_database() -> (String, String, PgPool) {
    let (url, admin) = postgres(2).await;
    let name = format!("cli_group_{}", Uuid::now_v7().simple());
    drop_object(&admin, &format!("DATABASE IF EXISTS {name}")).await;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let base = url.rsplit_once('/').unwrap().0;
    (format!("{base}/{name}"), name, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_status_shows_each_outbox_and_what_needs_attention() {
    // "clean": SQLite, migrated, nothing in it.
    let (dir, clean_url) = sqlite_file();
    Cli::on(&clean_url, &[]).expect(&["migrate"], 0);
    // "stuck": PostgreSQL, a message that failed for good and its key.
    let (stuck_url, stuck_db, admin) = pg_database().await;
    let stuck_pool = PgPool::connect(&stuck_url).await.unwrap();
    let stuck = PgOutbox::new(stuck_pool.clone());
    stuck.migrate().await.unwrap();
    let poison = NewMessage::json("orders", &serde_json::json!({ "n": 1 }))
        .unwrap()
        .with_partition_key("a");
    stuck.enqueue(&stuck_pool, poison).await.unwrap();
    let relay = Relay::builder(
        stuck.clone(),
        FnPublisher::new(|_m: OutboxMessage| async {
            Err(PublishError::permanent("the schema was rejected"))
        }),
    )
    .poll_interval(Duration::from_millis(50))
    .spawn()
    .unwrap();
    let start = Instant::now();
    while stuck.dead_letters(1).await.unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.shutdown().await.unwrap();
    let blocked = stuck.blocked_keys().await.unwrap().len();
    // "silent": accepts connections and never answers, with a password
    // that must appear nowhere.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "postgres://relay:s3cret-pw@{}/app",
        silent.local_addr().unwrap()
    );
    // Named in a file (a name with a space, comments) and by option.
    let list = dir.join("outboxes.txt");
    std::fs::write(
        &list,
        format!("# tenants\n\nclean shop  {clean_url}\nsilent {silent_url}\n"),
    )
    .unwrap();
    let list = list.to_str().unwrap();
    let cli = bare(&[
        "--outbox",
        &format!("stuck={stuck_url}"),
        "--outboxes",
        list,
    ]);

    let started = Instant::now();
    let status = cli.json(&["group", "status", "--timeout", "2s"], 2);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a silent database held the command for {:?}",
        started.elapsed()
    );
    let rows = status["outboxes"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["stuck", "clean shop", "silent"], "{status}");
    let (stuck_row, clean_row, silent_row) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(stuck_row["verdict"], "needs attention", "{status}");
    assert_eq!(stuck_row["dead_letters"], 1, "{status}");
    assert_eq!(stuck_row["blocked_keys"], blocked, "{status}");
    assert_eq!(stuck_row["pending"], 0, "{status}");
    assert!(
        stuck_row["attention"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("1 dead letter")),
        "{status}"
    );
    assert_eq!(clean_row["verdict"], "ok", "{status}");
    assert_eq!(clean_row["pending"], 0, "{status}");
    assert_eq!(clean_row["live_relays"], 0, "{status}");
    assert_eq!(silent_row["verdict"], "unreachable", "{status}");
    assert!(
        silent_row["error"]
            .as_str()
            .unwrap()
            .contains("did not answer within 2s"),
        "{status}"
    );
    assert_eq!(
        silent_row["url"],
        format!("postgres://relay:***@{}/app", silent.local_addr().unwrap()),
        "{status}"
    );
    let totals = &status["totals"];
    assert_eq!(totals["outboxes"], 3, "{status}");
    assert_eq!(totals["ok"], 1, "{status}");
    assert_eq!(totals["needs_attention"], 1, "{status}");
    assert_eq!(totals["unreachable"], 1, "{status}");
    assert_eq!(totals["dead_letters"], 1, "{status}");

    let out = cli.run(&["group", "status", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {text}"))
            .to_owned()
    };
    assert!(line("stuck ").ends_with("needs attention"), "{text}");
    assert!(line("clean shop ").ends_with("ok"), "{text}");
    assert!(line("silent ").ends_with("unreachable"), "{text}");
    assert!(
        line("TOTAL").contains("1 ok, 1 need attention, 1 unreachable"),
        "{text}"
    );
    assert!(text.contains("stuck: 1 dead letter(s)"), "{text}");
    assert!(text.contains("silent: unreachable: "), "{text}");
    let everything = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!everything.contains("s3cret-pw"), "{everything}");

    // Without the stuck and the silent one: all is well.
    let healthy = bare(&["--outbox", &format!("clean={clean_url}")]);
    let status = healthy.json(&["group", "status"], 0);
    assert_eq!(status["totals"]["ok"], 1, "{status}");

    // A name given twice, a line without a URL, no outbox at all: errors
    // that name what is wrong.
    let twice = bare(&[
        "--outbox",
        &format!("clean shop={clean_url}"),
        "--outboxes",
        list,
    ]);
    let out = twice.run(&["group", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("\"clean shop\" is given twice"), "{said}");
    let broken = dir.join("broken.txt");
    std::fs::write(&broken, "lonely\n").unwrap();
    let out = bare(&["--outboxes", broken.to_str().unwrap()]).run(&["group", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("broken.txt line 1"), "{said}");
    let out = bare(&[]).run(&["group", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--outbox NAME=URL"));

    // `outbox console` given several outboxes serves the group's index.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut console = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .args(["--outbox", &format!("clean={clean_url}")])
        .args(["--outbox", &format!("stuck={stuck_url}")])
        .args(["console", "--listen", &listen])
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the outbox binary runs");
    let http = reqwest::Client::new();
    let index: Value = loop {
        if let Ok(r) = http
            .get(format!("http://{listen}/api/outboxes"))
            .send()
            .await
        {
            assert_eq!(r.status(), 200);
            break serde_json::from_str(&r.text().await.unwrap()).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the console never answered on {listen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(index["outboxes"][0]["name"], "clean", "{index}");
    assert_eq!(index["outboxes"][1]["dead_letters"], 1, "{index}");
    let dead: Value = serde_json::from_str(
        &http
            .get(format!("http://{listen}/o/stuck/api/dead"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(dead["dead_letters"].as_array().unwrap().len(), 1, "{dead}");
    console.kill().unwrap();
    console.wait().unwrap();

    drop(silent);
    stuck_pool.close().await;
    drop_object(&admin, &format!("DATABASE {stuck_db} WITH (FORCE)")).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
