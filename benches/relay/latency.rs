//! Commit-to-publish latency: a producer at a steady rate, the relay in a
//! process of its own woken only by notifications.

use super::*;

/// Records when each message reached the publisher (wall clock, shared by
/// every process on the machine).
#[derive(Default)]
struct StampingPublisher {
    seen: Mutex<Vec<(outbox::MessageId, u128)>>,
}

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

#[async_trait]
impl Publisher for StampingPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let now = now_micros();
        self.seen
            .lock()
            .unwrap()
            .extend(batch.iter().map(|m| (m.id(), now)));
        batch.iter().map(|_| Ok(())).collect()
    }
}

/// The relay process of the latency run: relays until its standard input
/// closes, then prints `id micros` for every message it published.
pub(super) fn relay_child(url: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .unwrap();
        let publisher = Arc::new(StampingPublisher::default());
        let relay = Relay::builder(PgOutbox::new(pool), publisher.clone())
            .spawn()
            .unwrap();
        println!("ready");
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut sink);
        })
        .await
        .unwrap();
        relay.shutdown().await.unwrap();
        let mut out = String::new();
        for (id, t) in publisher.seen.lock().unwrap().iter() {
            out.push_str(&format!("{id} {t}\n"));
        }
        print!("{out}");
    });
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Open-loop producer at `rate` events/s in this process; the relay runs
/// in another process with its own connections, woken only by the NOTIFY
/// sent after each commit. Latency = publish time - time COMMIT returned,
/// both from the machine's wall clock.
pub(super) async fn latency(cfg: &Config, rate: f64, res: &mut Results) {
    let secs = if rate < 100.0 {
        cfg.latency_secs.min(10.0)
    } else {
        cfg.latency_secs
    };
    let (s, _) = commit_to_publish(rate, secs, None).await;
    let mut s: Vec<f64> = s.into_iter().map(|(_, l)| l).collect();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99, max) = (
        percentile(&s, 0.5),
        percentile(&s, 0.99),
        s.last().copied().unwrap_or(f64::NAN),
    );
    let r = rate as u64;
    res.put(&format!("latency_p50_ms_{r}"), p50);
    res.put(&format!("latency_p99_ms_{r}"), p99);
    res.put(&format!("latency_max_ms_{r}"), max);
    res.put(&format!("latency_samples_{r}"), s.len() as f64);
    res.row(
        format!("commit-to-publish at {r} events/s, relay in another process (p50 / p99 / max)"),
        format!(
            "{p50:.2} / {p99:.2} / {max:.2} ms ({} samples after a 1 s warm-up)",
            s.len()
        ),
    );
}

/// Commit-to-publish latency at 3,000 events/s before and during a
/// `REPEATABLE READ` transaction held open on the same database (a
/// report, a long `pg_dump`): while it holds the horizon, vacuum keeps
/// every row deleted since, and the claims must not slow down with them.
pub(super) async fn pinned(cfg: &Config, res: &mut Results) {
    let rate = 3000.0;
    let (before, pin) = if cfg.quick { (5.0, 10.0) } else { (15.0, 30.0) };
    let (samples, (from, to)) = commit_to_publish(rate, before + pin, Some(before)).await;
    let percentiles_of = |keep: &dyn Fn(u128) -> bool| {
        let mut s: Vec<f64> = samples
            .iter()
            .filter(|(at, _)| keep(*at))
            .map(|(_, l)| *l)
            .collect();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (percentile(&s, 0.5), percentile(&s, 0.99), s.len())
    };
    let (p50_before, p99_before, n_before) = percentiles_of(&|at| at < from);
    // The first second of the pin is left out: dead rows pile up from it.
    let (p50_pinned, p99_pinned, n_pinned) =
        percentiles_of(&|at| at >= from + 1_000_000 && at < to);
    let ratio = p99_pinned / p99_before;
    res.put("pinned_p50_ms_before", p50_before);
    res.put("pinned_p99_ms_before", p99_before);
    res.put("pinned_p50_ms_during", p50_pinned);
    res.put("pinned_p99_ms_during", p99_pinned);
    res.put("pinned_p99_ratio", ratio);
    res.row(
        format!(
            "commit-to-publish at 3000 events/s during a {pin:.0} s REPEATABLE READ pin: \
             p99 during / p99 before"
        ),
        format!(
            "{ratio:.2} (p50 / p99 before {p50_before:.2} / {p99_before:.2} ms, {n_before} \
             samples; during {p50_pinned:.2} / {p99_pinned:.2} ms, {n_pinned} samples)"
        ),
    );
}

/// Runs a producer at `rate` events/s for `secs` seconds (after a second
/// of warm-up) against a relay in another process, and returns, for each
/// message, when its commit returned (µs since the epoch) and its
/// commit-to-publish latency in ms. With `pin_after`, a `REPEATABLE READ`
/// transaction on the same database is held open from that many seconds
/// after the warm-up to the end of the run, and the pin's start and end
/// come back too.
async fn commit_to_publish(
    rate: f64,
    secs: f64,
    pin_after: Option<f64>,
) -> (Vec<(u128, f64)>, (u128, u128)) {
    let pool = fresh_db("outbox_bench_latency").await;
    let producer = PgOutbox::new(pool.clone());
    producer.migrate().await.unwrap();
    let url = {
        let base = admin_url();
        let cut = base.rfind('/').unwrap();
        format!("{}/outbox_bench_latency", &base[..cut])
    };
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--relay-child", &url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the relay process");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // One more second for the warm-up.
    let total = (rate * (secs + 1.0)) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let stamps: Arc<Mutex<HashMap<outbox::MessageId, u128>>> = Arc::default();
    let start = Instant::now();
    let pin = pin_after.map(|after| {
        let pool = pool.clone();
        let (from, until) = (
            start + Duration::from_secs_f64(1.0 + after),
            start + Duration::from_secs_f64(1.0 + secs),
        );
        tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await
                .unwrap();
            // The snapshot is taken here and holds the horizon until the
            // transaction ends.
            sqlx::query("SELECT count(*) FROM pg_class")
                .execute(&mut *tx)
                .await
                .unwrap();
            let pinned_at = now_micros();
            tokio::time::sleep_until(until.into()).await;
            tx.commit().await.unwrap();
            (pinned_at, now_micros())
        })
    });
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (pool, producer, stamps) = (pool.clone(), producer.clone(), stamps.clone());
        tasks.push(tokio::spawn(async move {
            let m = NewMessage::json("candidates", &payload(i))
                .unwrap()
                .with_partition_key(format!("candidate-{}", i % 1000));
            let id = m.id();
            let mut tx = pool.begin().await.unwrap();
            producer.enqueue(&mut *tx, m).await.unwrap();
            producer.commit(tx).await.unwrap();
            // The first second warms up connections and prepared statements
            // on both sides; it is not measured.
            if i as f64 >= rate {
                stamps.lock().unwrap().insert(id, now_micros());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let pinned = match pin {
        Some(p) => p.await.unwrap(),
        None => (0, 0),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while producer.pending_count().await.unwrap() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(child.stdin.take()); // the relay stops and reports
    let mut reported = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut reported).unwrap();
    child.wait().unwrap();
    let stamps = stamps.lock().unwrap().clone();
    let samples = reported
        .lines()
        .filter_map(|l| {
            let (id, t) = l.split_once(' ')?;
            let committed = *stamps.get(&id.parse().ok()?)?;
            let t: u128 = t.parse().ok()?;
            Some((committed, t.saturating_sub(committed) as f64 / 1000.0))
        })
        .collect();
    pool.close().await;
    (samples, pinned)
}
