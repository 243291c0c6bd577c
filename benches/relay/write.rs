//! Write throughput: business transactions alone, with a raw outbox
//! INSERT, and with the crate's enqueue, side by side in one run.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum WriteMode {
    /// One domain row, commit.
    BusinessOnly,
    /// Plus one raw-SQL outbox INSERT of the same row shape.
    RawInsert,
    /// Plus the crate's enqueue, committed with `tx.commit()`.
    Enqueue,
    /// The same without the per-key commit-order lock.
    EnqueueNoLock,
    /// Plus the crate's enqueue, committed with `outbox.commit(tx)` (the
    /// default wake-up: in-process signal and a coalesced NOTIFY).
    EnqueueWake,
    /// Plus the crate's enqueue with `WakeUp::InTransaction`: every
    /// transaction carries a `pg_notify`.
    EnqueueNotifying,
}

/// Transactions per second over `secs` with `writers` tasks.
async fn write_tps(
    pool: &PgPool,
    outbox: &PgOutbox,
    mode: WriteMode,
    writers: usize,
    secs: f64,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let pool = pool.clone();
        let outbox = outbox.clone();
        let stop = stop.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = (w as u64) << 40;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("INSERT INTO business (id, status) VALUES ($1, 'hired')")
                    .bind(i as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let key = format!("candidate-{}", i % 10_000);
                match mode {
                    WriteMode::BusinessOnly => {
                        tx.commit().await.unwrap();
                    }
                    WriteMode::RawInsert => {
                        let body = serde_json::to_vec(&payload(i)).unwrap();
                        sqlx::query(
                            "INSERT INTO raw_outbox (id, topic, partition_key, event_type, \
                             schema_version, payload, content_type, headers) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
                        )
                        .bind(uuid::Uuid::now_v7())
                        .bind("candidates")
                        .bind(&key)
                        .bind("CandidateHired")
                        .bind(1_i32)
                        .bind(body)
                        .bind("application/json")
                        .bind(None::<String>)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                        tx.commit().await.unwrap();
                    }
                    WriteMode::Enqueue
                    | WriteMode::EnqueueNoLock
                    | WriteMode::EnqueueWake
                    | WriteMode::EnqueueNotifying => {
                        let m = NewMessage::json("candidates", &payload(i))
                            .unwrap()
                            .with_partition_key(key)
                            .with_event_type("CandidateHired");
                        outbox.enqueue(&mut *tx, m).await.unwrap();
                        if mode == WriteMode::EnqueueWake {
                            outbox.commit(tx).await.unwrap();
                        } else {
                            tx.commit().await.unwrap();
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Warm up, then measure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_count = done.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let n = done.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / elapsed
}

pub(super) async fn bench_writes(cfg: &Config, res: &mut Results) {
    let pool = fresh_db("outbox_bench_write").await;
    let outbox = PgOutbox::new(pool.clone());
    let unlocked = PgOutbox::builder(pool.clone())
        .commit_order_lock(false)
        .build()
        .unwrap();
    outbox.migrate().await.unwrap();
    sqlx::query("CREATE TABLE business (id bigint PRIMARY KEY, status text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(RAW_TABLE).execute(&pool).await.unwrap();
    let counts = cfg.writers.clone().unwrap_or_else(|| vec![1, 8, 32]);
    for writers in counts {
        // Modes interleaved, `rounds` times, median per mode: the machine's
        // drift hits every mode alike.
        let mut runs: HashMap<WriteMode, Vec<f64>> = HashMap::new();
        for mode in (0..cfg.write_rounds).flat_map(|_| {
            [
                WriteMode::BusinessOnly,
                WriteMode::RawInsert,
                WriteMode::Enqueue,
                WriteMode::EnqueueNoLock,
                WriteMode::EnqueueWake,
            ]
        }) {
            sqlx::raw_sql("TRUNCATE business; TRUNCATE raw_outbox; TRUNCATE outbox.messages")
                .execute(&pool)
                .await
                .unwrap();
            let o = if mode == WriteMode::EnqueueNoLock {
                &unlocked
            } else {
                &outbox
            };
            let t = write_tps(&pool, o, mode, writers, cfg.write_secs).await;
            runs.entry(mode).or_default().push(t);
        }
        let runs = Rounds(runs);
        let vs_raw = runs.ratio(WriteMode::Enqueue, WriteMode::RawInsert);
        let nolock_vs_raw = runs.ratio(WriteMode::EnqueueNoLock, WriteMode::RawInsert);
        let wake_vs_business = runs.ratio(WriteMode::EnqueueWake, WriteMode::BusinessOnly);
        let enq_vs_business = runs.ratio(WriteMode::Enqueue, WriteMode::BusinessOnly);
        let raw_vs_business = runs.ratio(WriteMode::RawInsert, WriteMode::BusinessOnly);
        let business = runs.tps(WriteMode::BusinessOnly);
        let raw = runs.tps(WriteMode::RawInsert);
        let enq = runs.tps(WriteMode::Enqueue);
        let unlocked_tps = runs.tps(WriteMode::EnqueueNoLock);
        let woken = runs.tps(WriteMode::EnqueueWake);
        let w = writers;
        res.put(&format!("write_tps_business_{w}"), business);
        res.put(&format!("write_tps_raw_{w}"), raw);
        res.put(&format!("write_tps_enqueue_{w}"), enq);
        res.put(&format!("write_tps_enqueue_nolock_{w}"), unlocked_tps);
        res.put(&format!("write_tps_enqueue_wake_{w}"), woken);
        res.put(&format!("write_ratio_vs_raw_{w}"), vs_raw);
        res.put(&format!("write_ratio_nolock_vs_raw_{w}"), nolock_vs_raw);
        res.put(&format!("write_ratio_vs_business_{w}"), wake_vs_business);
        res.put(
            &format!("write_ratio_vs_business_nowake_{w}"),
            enq_vs_business,
        );
        res.put(&format!("write_ratio_raw_vs_business_{w}"), raw_vs_business);
        res.row(
            format!("write, {w} writers: enqueue / raw INSERT"),
            format!("{vs_raw:.2} ({enq:.0} vs {raw:.0} tx/s)"),
        );
        res.row(
            format!("write, {w} writers: enqueue without commit-order lock / raw INSERT"),
            format!("{nolock_vs_raw:.2} ({unlocked_tps:.0} tx/s)"),
        );
        res.row(
            format!("write, {w} writers: enqueue + default wake-up / business only"),
            format!("{wake_vs_business:.2} ({woken:.0} vs {business:.0} tx/s)"),
        );
        res.row(
            format!("write, {w} writers: enqueue, no wake-up / business only"),
            format!("{enq_vs_business:.2}"),
        );
        res.row(
            format!("write, {w} writers: raw INSERT / business only (the pattern's floor)"),
            format!("{raw_vs_business:.2}"),
        );
    }
    pool.close().await;
}

/// Median of per-round ratios `a / b` (a round runs every mode back to
/// back, so both sides of a ratio share the machine's state of the
/// moment), and the median of each mode's rate.
struct Rounds(HashMap<WriteMode, Vec<f64>>);

impl Rounds {
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    }
    fn ratio(&self, a: WriteMode, b: WriteMode) -> f64 {
        Self::median(
            self.0[&a]
                .iter()
                .zip(&self.0[&b])
                .map(|(x, y)| x / y)
                .collect(),
        )
    }
    fn tps(&self, mode: WriteMode) -> f64 {
        Self::median(self.0[&mode].clone())
    }
}

/// Counts the backends of `db` waiting on a heavyweight lock on an object
/// (`Lock:object`, where committing transactions that notify queue for the
/// notification queue's lock), every 50 ms until `stop`; the mean.
async fn sample_object_lock_waits(db: PgPool, stop: Arc<AtomicBool>) -> f64 {
    let (mut sum, mut samples) = (0i64, 0i64);
    while !stop.load(Ordering::Relaxed) {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND wait_event = 'object'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        sum += waiting;
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sum as f64 / samples.max(1) as f64
}

/// Slow commits: 8 writers with `synchronous_commit = on` and every WAL
/// flush delayed by `commit_delay` (`--commit-delay=µs`, default 2000;
/// `commit_siblings = 0`, so every committing transaction that wrote WAL
/// waits, as on a slow disk). PostgreSQL holds the notification queue's
/// lock from a notifying transaction's pre-commit until its commit is
/// flushed, so notifying commits queue behind each other's flushes.
pub(super) async fn bench_slow_commits(cfg: &Config, res: &mut Results) {
    const WRITERS: usize = 8;
    let delay: u32 = arg("commit-delay")
        .map(|d| d.parse().expect("--commit-delay=microseconds"))
        .unwrap_or(2000);
    let setup = fresh_db("outbox_bench_write_slow").await;
    PgOutbox::new(setup.clone()).migrate().await.unwrap();
    sqlx::query("CREATE TABLE business (id bigint PRIMARY KEY, status text NOT NULL)")
        .execute(&setup)
        .await
        .unwrap();
    // For every new session of the database, the outbox's own NOTIFY
    // connection included; `commit_delay` is for superusers to set, which
    // the bench connects as.
    sqlx::raw_sql(&format!(
        "ALTER DATABASE outbox_bench_write_slow SET synchronous_commit = on; \
         ALTER DATABASE outbox_bench_write_slow SET commit_delay = {delay}; \
         ALTER DATABASE outbox_bench_write_slow SET commit_siblings = 0"
    ))
    .execute(&setup)
    .await
    .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(48)
        .connect_with(setup.connect_options().as_ref().clone())
        .await
        .unwrap();
    let outbox = PgOutbox::new(pool.clone());
    let notifying = PgOutbox::builder(pool.clone())
        .wake_up(outbox::WakeUp::InTransaction)
        .build()
        .unwrap();
    let modes = [
        WriteMode::BusinessOnly,
        WriteMode::Enqueue,
        WriteMode::EnqueueWake,
        WriteMode::EnqueueNotifying,
    ];
    let mut runs: HashMap<WriteMode, Vec<f64>> = HashMap::new();
    let mut waits: HashMap<WriteMode, Vec<f64>> = HashMap::new();
    for mode in (0..cfg.write_rounds).flat_map(|_| modes) {
        sqlx::raw_sql("TRUNCATE business; TRUNCATE outbox.messages")
            .execute(&setup)
            .await
            .unwrap();
        let o = if mode == WriteMode::EnqueueNotifying {
            &notifying
        } else {
            &outbox
        };
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn(sample_object_lock_waits(setup.clone(), stop.clone()));
        let t = write_tps(&pool, o, mode, WRITERS, cfg.write_secs).await;
        stop.store(true, Ordering::Relaxed);
        waits.entry(mode).or_default().push(sampler.await.unwrap());
        runs.entry(mode).or_default().push(t);
    }
    let runs = Rounds(runs);
    let waits = Rounds(waits);
    let business = runs.tps(WriteMode::BusinessOnly);
    let woken = runs.tps(WriteMode::EnqueueWake);
    let notified = runs.tps(WriteMode::EnqueueNotifying);
    let wake_vs_business = runs.ratio(WriteMode::EnqueueWake, WriteMode::BusinessOnly);
    let enq_vs_business = runs.ratio(WriteMode::Enqueue, WriteMode::BusinessOnly);
    let notifying_vs_business = runs.ratio(WriteMode::EnqueueNotifying, WriteMode::BusinessOnly);
    let (wake_waits, notifying_waits) = (
        waits.tps(WriteMode::EnqueueWake),
        waits.tps(WriteMode::EnqueueNotifying),
    );
    let w = WRITERS;
    res.put(&format!("write_tps_business_{w}_slow_commit"), business);
    res.put(&format!("write_tps_enqueue_wake_{w}_slow_commit"), woken);
    res.put(
        &format!("write_ratio_vs_business_{w}_slow_commit"),
        wake_vs_business,
    );
    res.put(
        &format!("write_ratio_vs_business_nowake_{w}_slow_commit"),
        enq_vs_business,
    );
    res.put(
        &format!("write_ratio_vs_business_in_transaction_{w}_slow_commit"),
        notifying_vs_business,
    );
    res.put(
        &format!("write_lock_object_waiters_{w}_slow_commit"),
        wake_waits,
    );
    res.put(
        &format!("write_lock_object_waiters_in_transaction_{w}_slow_commit"),
        notifying_waits,
    );
    let slow = format!("{delay} µs commit_delay");
    res.row(
        format!("write, {w} writers, {slow}: enqueue + default wake-up / business only"),
        format!(
            "{wake_vs_business:.2} ({woken:.0} vs {business:.0} tx/s; \
             {wake_waits:.1} backends waiting on Lock:object)"
        ),
    );
    res.row(
        format!("write, {w} writers, {slow}: enqueue, no wake-up / business only"),
        format!("{enq_vs_business:.2}"),
    );
    res.row(
        format!("write, {w} writers, {slow}: enqueue + WakeUp::InTransaction / business only"),
        format!(
            "{notifying_vs_business:.2} ({notified:.0} tx/s; \
             {notifying_waits:.1} backends waiting on Lock:object)"
        ),
    );
    pool.close().await;
    setup.close().await;
}
