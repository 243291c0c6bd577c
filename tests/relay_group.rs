//! Relay groups on the local PostgreSQL: many databases, each an outbox,
//! served by two processes' groups at once. One database holds a backlog
//! while the others take steady traffic; a group process is SIGKILLed
//! mid-run and replaced; a database joins and another leaves the test
//! process's group while it runs. Deliveries are recorded in a database of
//! their own, so they survive the killed process.
//!
//! At CI scale: 50 databases and a backlog of 20,000 messages. Bigger:
//! `OUTBOX_GROUP_DATABASES=50 OUTBOX_GROUP_BACKLOG=500000 cargo test
//! --all-features --test relay_group` (PostgreSQL needs `max_connections`
//! of about 10 per database; `.ci/run` sets 1000).

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox::{
    NewMessage, OutboxMessage, PgOutbox, PublishError, Publisher, Relay, RelayBuilder, RelayGroup,
    RelayState,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

mod support;

use support::pg::{admin_url, START_PG};

const KEYS_PER_OUTBOX: usize = 5;
/// Each steady outbox's pace: 5 messages a second.
const STEADY_EVERY: Duration = Duration::from_millis(200);
const BACKLOG_KEYS: usize = 100;
/// The test process's own deliveries.
const THIS_PROCESS: i32 = 0;
/// This process's group: its connection budget, three per round at once
/// (the child's group has none).
const BUDGET: usize = 24;
const ROUNDS: usize = 8;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

fn admin() -> PgConnectOptions {
    admin_url().parse().expect("OUTBOX_TEST_PG is a URL")
}

async fn admin_connection() -> sqlx::PgConnection {
    admin().connect().await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {} ({e}). Start it with: {START_PG}",
            admin_url()
        )
    })
}

/// A member's pools as the group's docs advise: small, idle connections
/// let go.
async fn member_pool(db: &str, application: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(5)
        .min_connections(0)
        .idle_timeout(Duration::from_secs(30))
        .connect_with(admin().database(db).application_name(application))
        .await
        .unwrap_or_else(|e| panic!("connect to {db}: {e}"))
}

/// Records every delivery in the sink database, with the process that made
/// it and the sink's clock.
struct Sink {
    pool: PgPool,
    process: i32,
}

#[async_trait]
impl Publisher for Sink {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let mut outboxes = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        let mut keys = Vec::with_capacity(batch.len());
        let mut counters = Vec::with_capacity(batch.len());
        let mut created = Vec::with_capacity(batch.len());
        for m in batch {
            outboxes.push(m.topic().to_owned());
            ids.push(Uuid::from(m.id()));
            keys.push(m.partition_key().unwrap_or_default().to_owned());
            counters.push(serde_json::from_slice::<i64>(m.payload()).unwrap_or(-1));
            created.push(m.created_at());
        }
        let recorded = sqlx::query(
            "INSERT INTO deliveries (outbox, id, key, counter, created_at, process) \
             SELECT o, i, k, c, t, $6 FROM unnest($1::text[], $2::uuid[], $3::text[], \
             $4::bigint[], $5::timestamptz[]) AS u(o, i, k, c, t)",
        )
        .bind(&outboxes)
        .bind(&ids)
        .bind(&keys)
        .bind(&counters)
        .bind(&created)
        .bind(self.process)
        .execute(&self.pool)
        .await;
        match recorded {
            Ok(_) => batch.iter().map(|_| Ok(())).collect(),
            Err(e) => {
                let e = e.to_string();
                batch
                    .iter()
                    .map(|_| Err(PublishError::transient(e.clone())))
                    .collect()
            }
        }
    }
}

async fn sink_pool(sink: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(16)
        .connect_with(admin().database(sink))
        .await
        .expect("connect to the sink database")
}

/// A member relay of a group, with the default leases (10 s): a killed
/// process's buckets pass on within seconds of that.
async fn member(db: &str, publisher: Arc<Sink>, application: &str) -> RelayBuilder {
    let outbox = PgOutbox::new(member_pool(db, application).await);
    Relay::builder(outbox, publisher)
        .batch_size(500)
        .poll_interval(Duration::from_millis(200))
}

/// The group process the test starts (a re-run of this binary): serves
/// every database named in `OUTBOX_GROUP_CHILD_DBS` until it is killed.
#[test]
fn group_child_process() {
    let Ok(dbs) = std::env::var("OUTBOX_GROUP_CHILD_DBS") else {
        return;
    };
    let sink = std::env::var("OUTBOX_GROUP_CHILD_SINK").expect("OUTBOX_GROUP_CHILD_SINK is set");
    log_warnings(&log_dir(), std::process::id() as i32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let publisher = Arc::new(Sink {
            pool: sink_pool(&sink).await,
            process: std::process::id() as i32,
        });
        let group = RelayGroup::builder().build().unwrap();
        for db in dbs.split(',') {
            let relay = member(db, publisher.clone(), "outbox-group-child").await;
            group.add(db, relay).unwrap();
        }
        // Runs until killed.
        std::future::pending::<()>().await;
    });
}

/// A group process, killed when dropped (also when the test fails).
struct ChildGroup(Child);

impl Drop for ChildGroup {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(dbs: &[String], sink: &str, logs: &std::path::Path) -> ChildGroup {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "group_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OUTBOX_GROUP_CHILD_DBS", dbs.join(","))
        .env("OUTBOX_GROUP_CHILD_SINK", sink)
        .env("OUTBOX_GROUP_LOG_DIR", logs)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a group process");
    ChildGroup(child)
}

/// The databases of one run, dropped at the end (also after a failure, by
/// the next run's sweep in `.ci/run`).
struct Fleet {
    prefix: String,
    dbs: Vec<String>,
    sink: String,
}

impl Fleet {
    async fn create_db(&self, conn: &mut sqlx::PgConnection, name: &str) {
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }

    async fn new_outbox(&mut self, conn: &mut sqlx::PgConnection) -> String {
        let name = format!("{}_{:03}", self.prefix, self.dbs.len());
        self.create_db(conn, &name).await;
        let pool = member_pool(&name, "outbox-group-setup").await;
        PgOutbox::new(pool.clone()).migrate().await.unwrap();
        pool.close().await;
        self.dbs.push(name.clone());
        name
    }

    async fn drop_all(&self) {
        let mut conn = admin_connection().await;
        for db in self.dbs.iter().chain([&self.sink]) {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    }
}

/// Writes one message every `every` to `db`, its keys in turn, each key's
/// payload counting 1, 2, 3...; returns how many it committed.
async fn steady_writer(db: String, every: Duration, stop: Arc<AtomicBool>) -> (String, usize) {
    let pool = member_pool(&db, "outbox-group-writer").await;
    let outbox = PgOutbox::new(pool.clone());
    let mut counters = [0_i64; KEYS_PER_OUTBOX];
    let mut written = 0;
    let mut tick = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let k = written % KEYS_PER_OUTBOX;
        counters[k] += 1;
        let m = NewMessage::json(db.clone(), &counters[k])
            .unwrap()
            .with_partition_key(format!("k{k}"));
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue(&mut *tx, m).await.unwrap();
        outbox.commit(tx).await.unwrap();
        written += 1;
    }
    pool.close().await;
    (db, written)
}

async fn prefill_backlog(db: &str, n: usize) {
    let pool = member_pool(db, "outbox-group-setup").await;
    let outbox = PgOutbox::new(pool.clone());
    let mut counters = vec![0_i64; BACKLOG_KEYS];
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let batch: Vec<NewMessage> = chunk
            .iter()
            .map(|i| {
                let k = i % BACKLOG_KEYS;
                counters[k] += 1;
                NewMessage::json(db.to_owned(), &counters[k])
                    .unwrap()
                    .with_partition_key(format!("b{k}"))
            })
            .collect();
        outbox.enqueue_batch(&pool, batch).await.unwrap();
    }
    pool.close().await;
}

/// Samples the connections this process's group uses (those not idle)
/// every 20 ms until told to stop; the most seen at once.
async fn most_connections_in_use(stop: Arc<AtomicBool>) -> i64 {
    let mut conn = admin_connection().await;
    let mut most = 0;
    while !stop.load(Ordering::Relaxed) {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'outbox-group-test' AND state <> 'idle'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        most = most.max(n);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    most
}

async fn delivered_distinct(sink: &PgPool, outbox: &str) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT id) FROM deliveries WHERE outbox = $1")
        .bind(outbox)
        .fetch_one(sink)
        .await
        .unwrap()
}

async fn sink_now(sink: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(sink)
        .await
        .unwrap()
}

/// A recorded delivery: outbox, id, key, counter, process, created and
/// delivered at.
type Delivery = (String, Uuid, String, i64, i32, DateTime<Utc>, DateTime<Utc>);

/// Where each process writes its relays' warnings: `<process>.log`.
fn log_dir() -> std::path::PathBuf {
    let dir = std::env::var("OUTBOX_GROUP_LOG_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::temp_dir().join(format!("outbox-relay-group-{}", std::process::id()))
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The relays' warnings (leases lost, calls abandoned, acknowledgements
/// refused or failed) in this process's log file: a process that logged
/// none was never in a window where it may publish a message twice.
fn log_warnings(dir: &std::path::Path, process: i32) {
    let file = std::fs::File::create(dir.join(format!("{process}.log"))).unwrap();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "outbox=warn".to_owned()))
        .try_init();
}

/// What `process` logged.
fn warnings_of(dir: &std::path::Path, process: i32) -> String {
    std::fs::read_to_string(dir.join(format!("{process}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_process_is_killed_while_fifty_outboxes_flow_and_a_backlog_drains() {
    let logs = log_dir();
    log_warnings(&logs, THIS_PROCESS);
    let databases = setting("OUTBOX_GROUP_DATABASES", 50).max(3);
    let backlog = setting("OUTBOX_GROUP_BACKLOG", 20_000);
    let prefix = format!(
        "outbox_test_group_{}",
        &Uuid::now_v7().simple().to_string()[20..]
    );
    let mut fleet = Fleet {
        sink: format!("{prefix}_sink"),
        prefix,
        dbs: Vec::new(),
    };
    let mut conn = admin_connection().await;
    fleet.create_db(&mut conn, &fleet.sink.clone()).await;
    let sink = sink_pool(&fleet.sink).await;
    let stop_sampling = Arc::new(AtomicBool::new(false));
    sqlx::query(
        "CREATE TABLE deliveries (n bigserial PRIMARY KEY, outbox text NOT NULL, id uuid NOT NULL, \
         key text NOT NULL, counter bigint NOT NULL, created_at timestamptz NOT NULL, \
         process int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    .execute(&sink)
    .await
    .unwrap();
    for _ in 0..databases {
        fleet.new_outbox(&mut conn).await;
    }
    let busy = fleet.dbs[0].clone();
    prefill_backlog(&busy, backlog).await;

    // Two processes serve every database: a child, and this one.
    let mut child = spawn_child(&fleet.dbs, &fleet.sink, &logs);
    let publisher = Arc::new(Sink {
        pool: sink.clone(),
        process: THIS_PROCESS,
    });
    let group = RelayGroup::builder()
        .concurrent_rounds(ROUNDS)
        .max_connections(BUDGET)
        .build()
        .unwrap();
    for db in &fleet.dbs {
        let relay = member(db, publisher.clone(), "outbox-group-test").await;
        group.add(db, relay).unwrap();
    }
    let in_use = tokio::spawn(most_connections_in_use(stop_sampling.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for db in &fleet.dbs[1..] {
        writers.spawn(steady_writer(db.clone(), STEADY_EVERY, stop.clone()));
    }
    let drain_started = sink_now(&sink).await;

    // A third of the way through the backlog: a database joins, the child
    // is killed and another takes its place, and a database leaves this
    // process's group (the new child keeps serving it).
    // The child must have published from the backlog, so that its death
    // leaves buckets to take over.
    let third = (backlog / 3) as i64;
    let started = Instant::now();
    loop {
        let by_child: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE outbox = $1 AND process <> $2",
        )
        .bind(&busy)
        .bind(THIS_PROCESS)
        .fetch_one(&sink)
        .await
        .unwrap();
        // And this process must have published from the outbox that
        // leaves its group, or the check after it proves nothing.
        let here_from_leaving: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE outbox = $1 AND process = $2",
        )
        .bind(&fleet.dbs[1])
        .bind(THIS_PROCESS)
        .fetch_one(&sink)
        .await
        .unwrap();
        if by_child > 0 && here_from_leaving > 0 && delivered_distinct(&sink, &busy).await >= third
        {
            break;
        }
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the group process died on its own"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "in 5 minutes: not a third of the backlog, or none of it by the child, or nothing of the leaving outbox by this process"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let joined = fleet.new_outbox(&mut conn).await;
    group
        .add(
            &joined,
            member(&joined, publisher.clone(), "outbox-group-test").await,
        )
        .unwrap();
    writers.spawn(steady_writer(joined.clone(), STEADY_EVERY, stop.clone()));
    let kill_at = sink_now(&sink).await;
    child.0.kill().expect("SIGKILL the group process");
    let killed = child.0.id() as i32;
    child.0.wait().unwrap();
    let child = spawn_child(&fleet.dbs, &fleet.sink, &logs);
    let leaving = fleet.dbs[1].clone();
    assert!(group.remove(&leaving).await.unwrap());
    let left_at = sink_now(&sink).await;
    assert!(!group.names().contains(&leaving));
    assert_eq!(group.len(), fleet.dbs.len() - 1);

    // Until the backlog has drained, then a little longer.
    let started = Instant::now();
    while delivered_distinct(&sink, &busy).await < backlog as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the backlog did not drain in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_ended = sink_now(&sink).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written: HashMap<String, usize> = HashMap::new();
    while let Some(w) = writers.join_next().await {
        let (db, n) = w.unwrap();
        written.insert(db, n);
    }
    written.insert(busy.clone(), backlog);

    // Nothing lost: every message committed reaches the sink.
    let started = Instant::now();
    for (db, &n) in &written {
        loop {
            let got = delivered_distinct(&sink, db).await;
            if got == n as i64 {
                break;
            }
            assert!(got < n as i64, "{db}: {got} delivered of {n} written");
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{db}: only {got} of {n} delivered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every member still runs (a transient failure may leave one reading
    // PublishFailing for a minute).
    let health = group.health();
    assert!(
        health.values().all(|h| h.state != RelayState::Stopped),
        "{health:?}"
    );
    stop_sampling.store(true, Ordering::Relaxed);
    let most_in_use = in_use.await.unwrap();
    eprintln!("most connections in use at once: {most_in_use} (budget {BUDGET})");
    // Listening connections wait idle; a member that joins runs its
    // LISTEN once, outside the budget.
    assert!(
        most_in_use <= BUDGET as i64 + 1,
        "{most_in_use} connections in use at once, with a budget of {BUDGET}"
    );
    group.shutdown().await.unwrap();
    drop(child);

    let rows: Vec<Delivery> = sqlx::query_as(
        "SELECT outbox, id, key, counter, process, created_at, at FROM deliveries ORDER BY n",
    )
    .fetch_all(&sink)
    .await
    .unwrap();
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut first_by: HashMap<Uuid, i32> = HashMap::new();
    let mut last_counter: HashMap<(String, String), i64> = HashMap::new();
    let (mut duplicates, mut violations) = (0, 0);
    let (mut duplicates_after_lapses, mut left_published_here) = (0, 0);
    let mut steady_latencies = Vec::new();
    for (outbox, id, key, counter, process, created_at, at) in &rows {
        if outbox == &leaving && *process == THIS_PROCESS {
            assert!(
                *at <= left_at,
                "{outbox} left this process's group, which still published from it"
            );
        }
        if outbox == &leaving && *process == THIS_PROCESS && *at <= left_at {
            left_published_here += 1;
        }
        if !seen.insert(*id) {
            duplicates += 1;
            // A delivery is left unacknowledged only by a killed process,
            // or by one that stalled past its lease or lost its database
            // meanwhile, which it logs.
            let first = first_by[id];
            if first != killed {
                let log = warnings_of(&logs, first);
                let lapsed = [
                    "abandoning a publisher call",
                    "acknowledgements refused",
                    " failed",
                ]
                .iter()
                .any(|lapse| log.contains(lapse));
                assert!(
                    lapsed,
                    "{outbox} {id} delivered twice, first by process {first}, which was not \
                     killed and logged no lapse"
                );
                duplicates_after_lapses += 1;
            }
            continue;
        }
        first_by.insert(*id, *process);
        let last = last_counter
            .entry((outbox.clone(), key.clone()))
            .or_insert(0);
        if *counter != *last + 1 {
            violations += 1;
        }
        *last = *counter;
        // Messages near the kill wait for the killed process's leases to
        // expire (10 s): that is takeover, not scheduling.
        let near_kill = *created_at > kill_at - chrono::Duration::seconds(1)
            && *created_at < kill_at + chrono::Duration::seconds(13);
        if outbox != &busy && *created_at >= drain_started && *at <= drain_ended && !near_kill {
            steady_latencies.push((*at - *created_at).to_std().unwrap_or_default());
        }
    }
    steady_latencies.sort();
    let quantile = |q: f64| steady_latencies[((steady_latencies.len() - 1) as f64 * q) as usize];
    let (p50, p99) = (quantile(0.5), quantile(0.99));
    let drain = (drain_ended - drain_started).to_std().unwrap();
    let by_killed = first_by.values().filter(|p| **p == killed).count();
    let by_this = first_by.values().filter(|p| **p == THIS_PROCESS).count();
    eprintln!(
        "{} outboxes, backlog {backlog} drained in {drain:?} by two group processes \
         (one SIGKILLed after {by_killed} first deliveries, this one made {by_this}); \
         steady traffic meanwhile: {} messages, commit-to-publish p50 {p50:?}, p99 {p99:?}; \
         {duplicates} duplicates ({duplicates_after_lapses} after a logged lapse of a live \
         process), {violations} order violations",
        fleet.dbs.len(),
        steady_latencies.len()
    );
    assert_eq!(violations, 0, "per-key order broken");
    assert!(
        left_published_here > 0,
        "this process never published from {leaving} before it left the group"
    );
    assert!(by_killed > 0, "the killed process had published nothing");
    assert!(
        steady_latencies.len() > 100,
        "too little steady traffic to judge"
    );
    // Starved outboxes would wait for the backlog: half their messages
    // would wait for half the drain or more.
    assert!(
        p50 * 4 < drain,
        "steady outboxes waited behind the backlog: p50 {p50:?} of a {drain:?} drain"
    );
    drop(conn);
    sink.close().await;
    fleet.drop_all().await;
    let _ = std::fs::remove_dir_all(&logs);
}
