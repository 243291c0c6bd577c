//! Many outboxes: one database per outbox, relayed by one [`RelayGroup`]
//! or by as many separate relays, side by side in one run. For 1, 10 and
//! 50 outboxes: a backlog drained (throughput), then steady traffic from
//! producers elsewhere (commit-to-publish p99, woken by notifications), and
//! the connections each arrangement holds meanwhile.

use outbox::RelayGroup;

use super::*;

/// Each member's pool, as the group's docs advise.
fn member_pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(5)
        .min_connections(
            arg("group-min-connections")
                .map_or(0, |n| n.parse().expect("--group-min-connections=N")),
        )
        .idle_timeout(Duration::from_secs(30))
        .test_before_acquire(!std::env::args().any(|a| a == "--group-no-ping"))
}

/// Records when each message reached the publisher, and when the
/// `target`-th did (a backlog's last, for the backlog's own publisher).
#[derive(Default)]
struct Arrivals {
    seen: Mutex<HashMap<outbox::MessageId, Instant>>,
    count: AtomicU64,
    target: u64,
    reached: Mutex<Option<Instant>>,
}

impl Arrivals {
    fn until(target: u64) -> Self {
        Self {
            target,
            ..Self::default()
        }
    }
}

#[async_trait]
impl Publisher for Arrivals {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap();
        for m in batch {
            seen.entry(m.id()).or_insert(now);
        }
        // Distinct messages: a batch published again is not counted twice.
        if self.target > 0 && seen.len() as u64 >= self.target {
            self.reached.lock().unwrap().get_or_insert(now);
        }
        self.count.fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.iter().map(|_| Ok(())).collect()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Arrangement {
    Group,
    Separate,
}

impl Arrangement {
    fn name(self) -> &'static str {
        match self {
            Arrangement::Group => "group",
            Arrangement::Separate => "separate",
        }
    }
}

/// The relays of one arrangement; stopping them when done.
enum Running {
    Group(RelayGroup),
    Separate(Vec<RelayHandle>),
}

impl Running {
    async fn stop(self) {
        match self {
            Running::Group(g) => g.shutdown().await.unwrap(),
            Running::Separate(rs) => {
                for r in rs {
                    r.shutdown().await.unwrap();
                }
            }
        }
    }
}

/// The pools of one arrangement: pools of five for the group's members,
/// as its docs advise; sqlx's defaults (up to ten) for separate relays, as
/// a service running its relay alone would have.
async fn connect(arrangement: Arrangement, dbs: &[String], application: &str) -> Vec<PgPool> {
    let admin: PgConnectOptions = admin_url().parse().unwrap();
    let mut pools = Vec::new();
    for db in dbs {
        let options = match arrangement {
            Arrangement::Group => member_pool_options(),
            Arrangement::Separate => PgPoolOptions::new(),
        };
        let pool = options
            .connect_with(admin.clone().database(db).application_name(application))
            .await
            .unwrap();
        pools.push(pool);
    }
    pools
}

/// Starts the relays of `arrangement`; the first outbox's publishes go to
/// `first` (a backlog's own count), the others' to `publisher`.
fn start(
    arrangement: Arrangement,
    dbs: &[String],
    pools: Vec<PgPool>,
    publisher: &Arc<Arrivals>,
    first: &Arc<Arrivals>,
) -> Running {
    let publisher_of = |i: usize| {
        if i == 0 {
            first.clone()
        } else {
            publisher.clone()
        }
    };
    match arrangement {
        Arrangement::Group => {
            let mut group = RelayGroup::builder();
            if let Some(n) = arg("group-budget") {
                group = group.max_connections(n.parse().expect("--group-budget=N"));
            }
            if let Some(n) = arg("group-rounds") {
                group = group.concurrent_rounds(n.parse().expect("--group-rounds=N"));
            }
            if let Some(f) = arg("group-backlog-share") {
                group = group.backlog_share(f.parse().expect("--group-backlog-share=F"));
            }
            let group = group.build().unwrap();
            for (i, (db, pool)) in dbs.iter().zip(pools).enumerate() {
                group
                    .add(db, Relay::builder(PgOutbox::new(pool), publisher_of(i)))
                    .unwrap();
            }
            Running::Group(group)
        }
        Arrangement::Separate => Running::Separate(
            pools
                .into_iter()
                .enumerate()
                .map(|(i, pool)| {
                    Relay::builder(PgOutbox::new(pool), publisher_of(i))
                        .spawn()
                        .unwrap()
                })
                .collect(),
        ),
    }
}

async fn connections(application: &str) -> i64 {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url())
        .await
        .unwrap();
    let n = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(application)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// Enqueues `n` messages over 100 keys.
async fn prefill(pool: &PgPool, n: i64) {
    let outbox = PgOutbox::new(pool.clone());
    let batch: Vec<NewMessage> = (0..n as u64)
        .map(|i| {
            NewMessage::json("bench", &payload(i))
                .unwrap()
                .with_partition_key(format!("k{}", i % 100))
        })
        .collect();
    for chunk in batch.chunks(5_000) {
        outbox.enqueue_batch(pool, chunk.to_vec()).await.unwrap();
    }
}

/// Prefills every outbox with `per_outbox` messages and times the drain.
async fn drain(arrangement: Arrangement, dbs: &[String], pools: &[PgPool], per_outbox: i64) -> f64 {
    for pool in pools {
        prefill(pool, per_outbox).await;
    }
    let publisher = Arc::new(Arrivals::default());
    let total = per_outbox as u64 * dbs.len() as u64;
    let relay_pools = connect(arrangement, dbs, "outbox-bench-drain").await;
    let started = Instant::now();
    let running = start(arrangement, dbs, relay_pools, &publisher, &publisher);
    while publisher.count.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let per_s = total as f64 / started.elapsed().as_secs_f64();
    running.stop().await;
    per_s
}

/// What [`steady`] measured.
struct Steady {
    /// Commit-to-publish p99 of the steady traffic committed after the
    /// warm-up or, with a backlog, from when its first message was written
    /// until its last was published: the latency while it drained.
    p99: Duration,
    /// The samples `p99` is over.
    samples: usize,
    /// The p99 of all the steady traffic, the warm-up included.
    p99_all: Duration,
    /// Connections the relays held halfway through.
    held: i64,
    /// The backlog left when the traffic stopped.
    left: i64,
}

/// Steady traffic at `rate` messages per second spread over the outboxes,
/// from producers with pools of their own; after a two-second warm-up the
/// first outbox receives a backlog of `backlog` messages (none with one
/// outbox) and drains it: commit-to-publish latency of the steady traffic
/// while the backlog drained (after the warm-up without one), and over
/// the whole traffic; the connections the relays held, and the backlog
/// left when the traffic stopped. Producers
/// keep their outboxes until everything is published: a service that
/// commits and then closes its pool at once leaves its last wake-up unsent,
/// and the relay finds those messages at its next poll.
async fn steady(
    arrangement: Arrangement,
    dbs: &[String],
    pools: &[PgPool],
    rate: f64,
    secs: f64,
    backlog: i64,
) -> Steady {
    let application = format!("outbox-bench-{}", arrangement.name());
    let publisher = Arc::new(Arrivals::default());
    let draining = dbs.len() > 1 && backlog > 0;
    let first = if draining {
        Arc::new(Arrivals::until(backlog as u64))
    } else {
        publisher.clone()
    };
    let steady_dbs = if draining { &dbs[1..] } else { dbs };
    // The producers connect first; then the relays start and the traffic
    // with them.
    let admin: PgConnectOptions = admin_url().parse().unwrap();
    let mut producer_pools = Vec::new();
    for db in steady_dbs {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(admin.clone().database(db))
            .await
            .unwrap();
        producer_pools.push(pool);
    }
    let relay_pools = connect(arrangement, dbs, &application).await;
    let running = start(arrangement, dbs, relay_pools, &publisher, &first);
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_secs_f64(steady_dbs.len() as f64 / rate);
    let traffic_started = Instant::now();
    let mut writers = Vec::new();
    for pool in producer_pools {
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let outbox = PgOutbox::new(pool.clone());
            let mut committed = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                i += 1;
                let m = NewMessage::json("bench", &payload(i))
                    .unwrap()
                    .with_partition_key(format!("k{}", i % 10));
                let id = m.id();
                let mut tx = pool.begin().await.unwrap();
                outbox.enqueue(&mut *tx, m).await.unwrap();
                outbox.commit(tx).await.unwrap();
                committed.push((id, Instant::now()));
            }
            (committed, pool, outbox)
        }));
    }
    // The first two seconds are a cold start, whatever the backlog: the
    // relays take their leases and open their listeners (messages committed
    // before wait for the next poll), each producer's first commit opens
    // its outbox's NOTIFY connection, and each member's first rounds
    // prepare their statements on their connections (`--group-timeline`:
    // p99 150-350 ms in seconds 0 and 1 with the relays started earlier,
    // pools kept warm or not). Then the backlog arrives, as a bulk import
    // would, while the traffic goes on.
    let warm = traffic_started + Duration::from_secs(2);
    tokio::time::sleep_until(warm.into()).await;
    let backlog_started = Instant::now();
    if draining {
        prefill(&pools[0], backlog).await;
    }
    tokio::time::sleep_until((warm + Duration::from_secs_f64(secs / 2.0)).into()).await;
    let held = connections(&application).await;
    tokio::time::sleep_until((warm + Duration::from_secs_f64(secs)).into()).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = Vec::new();
    let mut producers = Vec::new();
    for w in writers {
        let (c, pool, outbox) = w.await.unwrap();
        committed.extend(c);
        producers.push((pool, outbox));
    }
    let left: i64 = if steady_dbs.len() < dbs.len() {
        sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
            .fetch_one(&pools[0])
            .await
            .unwrap()
    } else {
        0
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all_seen = {
            let seen = publisher.seen.lock().unwrap();
            committed.iter().all(|(id, _)| seen.contains_key(id))
        };
        if all_seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "steady traffic was not all published"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop().await;
    for (pool, outbox) in producers {
        drop(outbox);
        pool.close().await;
    }
    // What the backlog left is deleted, for the next arrangement.
    sqlx::query("DELETE FROM outbox.messages")
        .execute(&pools[0])
        .await
        .unwrap();
    let seen = publisher.seen.lock().unwrap();
    if std::env::args().any(|a| a == "--group-timeline") {
        timeline(arrangement, &committed, &seen);
    }
    let drained = if draining {
        *first.reached.lock().unwrap()
    } else {
        None
    };
    let p99_of = |from: Instant, until: Option<Instant>| {
        let mut lat: Vec<Duration> = committed
            .iter()
            .filter(|(_, at)| *at >= from && until.is_none_or(|u| *at < u))
            .map(|(id, at)| seen[id].saturating_duration_since(*at))
            .collect();
        lat.sort();
        let p99 = lat.get(lat.len().saturating_sub(1) * 99 / 100).copied();
        (p99.unwrap_or_default(), lat.len())
    };
    // A backlog gone before the warm-up ended leaves no window: the p99
    // after the warm-up stands for it (the row says so).
    let from = if draining { backlog_started } else { warm };
    let (p99, samples) = match p99_of(from, drained) {
        (_, 0) => (p99_of(warm, None).0, 0),
        measured => measured,
    };
    Steady {
        p99,
        samples,
        p99_all: p99_of(traffic_started, None).0,
        held,
        left,
    }
}

/// `--group-timeline`: the steady traffic's latency second by second (p50,
/// p99, max), to tell periodic tails from a steady load.
fn timeline(
    arrangement: Arrangement,
    committed: &[(outbox::MessageId, Instant)],
    seen: &HashMap<outbox::MessageId, Instant>,
) {
    let Some(first) = committed.iter().map(|(_, at)| *at).min() else {
        return;
    };
    let mut seconds: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for (id, at) in committed {
        let ms = seen[id].saturating_duration_since(*at).as_secs_f64() * 1e3;
        seconds
            .entry(at.duration_since(first).as_secs())
            .or_default()
            .push(ms);
    }
    eprintln!(
        "{} timeline: second, messages, p50, p99, max (ms)",
        arrangement.name()
    );
    for (second, mut ms) in seconds {
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        eprintln!(
            "  {second:>3} {:>5} {:>7.1} {:>7.1} {:>7.1}",
            ms.len(),
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            ms[ms.len() - 1]
        );
    }
}

/// The steady traffic's default pace: 5 msg/s per outbox at 50 outboxes.
/// At 1,000 msg/s, 50 outboxes saturate two cores with no backlog at all
/// (each message is its own producer transaction, wake-up, claim and
/// acknowledgement in its own database), so the p99 there measures the
/// machine, not how the relays share it; full runs measure that pace too,
/// at 50 outboxes, under keys of their own.
const STEADY_RATE: f64 = 250.0;
/// The saturating pace full runs add at 50 outboxes.
const SATURATING_RATE: f64 = 1000.0;

pub(super) async fn run(cfg: &Config, res: &mut Results) {
    // `--group-counts=50`, `--group-rate=1000`, `--group-backlog=0`: one
    // size, one pace (instead of the default and, at 50 in a full run, the
    // saturating one), another backlog (0: none).
    let counts: Vec<usize> = arg("group-counts").map_or_else(
        || vec![1, 10, 50],
        |c| {
            c.split(',')
                .map(|n| n.parse().expect("--group-counts=1,10,50"))
                .collect()
        },
    );
    let secs = if cfg.quick { 4.0 } else { 15.0 };
    let total_backlog: i64 = if cfg.quick { 20_000 } else { 200_000 };
    // One outbox's backlog during the steady traffic.
    let steady_backlog: i64 = arg("group-backlog")
        .map_or(if cfg.quick { 300_000 } else { 500_000 }, |b| {
            b.parse().expect("--group-backlog=N")
        });
    let given_rate: Option<f64> = arg("group-rate").map(|r| r.parse().expect("--group-rate=N"));
    let arrangements: Vec<Arrangement> = arg("group-arrangements").map_or_else(
        || vec![Arrangement::Group, Arrangement::Separate],
        |a| {
            a.split(',')
                .map(|a| match a {
                    "group" => Arrangement::Group,
                    "separate" => Arrangement::Separate,
                    _ => panic!("--group-arrangements=group,separate"),
                })
                .collect()
        },
    );
    for &n in &counts {
        let mut dbs = Vec::new();
        let mut pools = Vec::new();
        for i in 0..n {
            let name = format!("outbox_bench_group_{i:02}");
            let pool = fresh_db(&name).await;
            PgOutbox::new(pool.clone()).migrate().await.unwrap();
            dbs.push(name);
            pools.push(pool);
        }
        // Each pace with the key suffix its figures are stored under.
        let rates: Vec<(f64, String)> = match given_rate {
            Some(r) => vec![(r, String::new())],
            None if n == 50 && !cfg.quick => vec![
                (STEADY_RATE, String::new()),
                (SATURATING_RATE, format!("_at_{SATURATING_RATE:.0}")),
            ],
            None => vec![(STEADY_RATE, String::new())],
        };
        for arrangement in arrangements.iter().copied() {
            let name = arrangement.name();
            let how = match arrangement {
                Arrangement::Group => "one group, pools of 5",
                Arrangement::Separate => "one relay each, sqlx default pools",
            };
            let per_s = drain(arrangement, &dbs, &pools, total_backlog / n as i64).await;
            res.put(&format!("{name}_per_s_{n}"), per_s);
            res.row(
                format!("{n} outboxes, {name} ({how}): drain of {total_backlog} spread over them"),
                format!("{per_s:.0} msg/s"),
            );
            for (rate, suffix) in &rates {
                let backlog = if n > 1 { steady_backlog } else { 0 };
                let m = steady(arrangement, &dbs, &pools, *rate, secs, backlog).await;
                let p99_ms = m.p99.as_secs_f64() * 1e3;
                let all_ms = m.p99_all.as_secs_f64() * 1e3;
                res.put(&format!("{name}_p99_ms_{n}{suffix}"), p99_ms);
                res.put(&format!("{name}_p99_all_ms_{n}{suffix}"), all_ms);
                res.put(&format!("{name}_connections_{n}{suffix}"), m.held as f64);
                let (during, window) = if backlog > 0 {
                    (
                        format!(
                            " on {} while one drains {backlog} ({} left when the traffic stopped)",
                            n - 1,
                            m.left
                        ),
                        if m.samples == 0 {
                            format!(
                                "{p99_ms:.1} ms after the warm-up (the backlog drained within it), {all_ms:.1} ms over all the traffic"
                            )
                        } else {
                            format!(
                                "{p99_ms:.1} ms while it drained ({} samples), {all_ms:.1} ms over all the traffic",
                                m.samples
                            )
                        },
                    )
                } else {
                    (String::new(), format!("{p99_ms:.1} ms after the warm-up ({} samples), {all_ms:.1} ms over all the traffic", m.samples))
                };
                res.row(
                    format!(
                        "{n} outboxes, {name} ({how}): steady {rate} msg/s{during}: commit-to-publish p99 / connections"
                    ),
                    format!("{window} / {}", m.held),
                );
            }
        }
        for pool in pools {
            pool.close().await;
        }
    }
}
