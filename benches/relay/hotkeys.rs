//! Hot keys: a backlog of one busy key, and a Zipf-like mix of keys,
//! drained through a publisher that takes 1 ms per call (a broker's round
//! trip) against the same backlog over 10,000 uniform keys, measured just
//! before; one key drained with runs of a key turned off, for the figure
//! before them; and one hot key through NATS JetStream against uniform
//! keys through it.

use super::*;

/// How the backlog's keys are drawn.
#[derive(Clone, Copy)]
enum Keys {
    /// 10,000 keys, each as busy as the others.
    Uniform,
    /// One key for every message.
    One,
    /// Key k drawn with probability about 1/k over 10,000 keys (log-uniform
    /// ranks): the busiest key holds about a tenth of the messages.
    Zipf,
}

impl Keys {
    /// The SQL expression of message `g`'s key.
    fn sql(self) -> &'static str {
        match self {
            Keys::Uniform => "'candidate-' || (g % 10000)",
            Keys::One => "'candidate-hot'",
            Keys::Zipf => "'candidate-' || floor(exp(random() * ln(10000)))::int",
        }
    }
}

async fn prefill(pool: &PgPool, topic: &str, rows: i64, keys: Keys) {
    sqlx::query(&format!(
        "INSERT INTO outbox.messages (id, topic, partition_key, event_type, schema_version, \
         payload, content_type) SELECT gen_random_uuid(), $1, {}, 'CandidateHired', 1, \
         convert_to('{{\"candidate_id\": ' || g || '}}', 'UTF8'), 'application/json' \
         FROM generate_series(1, $2) g",
        keys.sql()
    ))
    .bind(topic)
    .bind(rows)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE outbox.messages")
        .execute(pool)
        .await
        .unwrap();
}

/// [`Noop`] behind a call that takes `delay`, taking runs of a key or not.
struct Slow {
    inner: Arc<Noop>,
    delay: Duration,
    runs: bool,
}

#[async_trait]
impl Publisher for Slow {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        tokio::time::sleep(self.delay).await;
        self.inner.publish(batch).await
    }

    fn keeps_key_order(&self) -> bool {
        self.runs
    }
}

/// Prefills the outbox with `rows` messages keyed by `keys` and drains it
/// with `publisher` (batch 1000): messages per second, timed from the
/// first publisher call to an empty outbox, so a short drain does not
/// count the relay's start (its leases, its first claim).
async fn drain_through<P: Publisher>(
    pool: &PgPool,
    topic: &str,
    rows: i64,
    keys: Keys,
    publisher: P,
) -> f64 {
    let outbox = PgOutbox::new(pool.clone());
    prefill(pool, topic, rows, keys).await;
    let timed = Timed::new(publisher);
    let relay = Relay::builder(outbox.clone(), timed.clone())
        .batch_size(1000)
        .poll_interval(Duration::from_millis(50))
        .spawn()
        .unwrap();
    let rate = timed.rate_after(rows as u64, &outbox).await;
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.pending_count().await.unwrap(), 0);
    rate
}

/// The rate of a drain of `rows` messages keyed by `keys` through a
/// publisher taking 1 ms per call.
async fn slow_drain(pool: &PgPool, rows: i64, keys: Keys, runs: bool) -> f64 {
    let noop = Arc::new(Noop::default());
    let publisher = Slow {
        inner: noop.clone(),
        delay: Duration::from_millis(1),
        runs,
    };
    let rate = drain_through(pool, "candidates", rows, keys, publisher).await;
    assert_eq!(noop.count.load(Ordering::Relaxed), rows as u64);
    VIOLATIONS.fetch_add(noop.violations.load(Ordering::Relaxed), Ordering::Relaxed);
    rate
}

pub(super) async fn run(cfg: &Config, res: &mut Results) {
    let pool = fresh_db("outbox_bench_hotkeys").await;
    PgOutbox::new(pool.clone()).migrate().await.unwrap();
    let rows = if cfg.quick { 20_000 } else { 100_000 };

    let uniform = slow_drain(&pool, rows, Keys::Uniform, true).await;
    let hot = slow_drain(&pool, rows, Keys::One, true).await;
    let zipf = slow_drain(&pool, rows, Keys::Zipf, true).await;
    // Without runs a hot key drains at one message per call: fewer rows.
    let waves_rows = rows / 10;
    let waves = slow_drain(&pool, waves_rows, Keys::One, false).await;
    res.put("hotkey_uniform_per_s", uniform);
    res.put("hotkey_per_s", hot);
    res.put("hotkey_ratio_vs_uniform", hot / uniform);
    res.put("zipf_ratio_vs_uniform", zipf / uniform);
    res.put("hotkey_waves_ratio_vs_uniform", waves / uniform);
    res.row(
        format!(
            "hot key, {rows} messages of one key / 10,000 uniform keys, publisher 1 ms per call"
        ),
        format!("{:.2} ({hot:.0} vs {uniform:.0} msg/s)", hot / uniform),
    );
    res.row(
        format!("Zipf-like keys, {rows} messages / uniform keys, publisher 1 ms per call"),
        format!("{:.2} ({zipf:.0} msg/s)", zipf / uniform),
    );
    res.row(
        format!(
            "hot key, {waves_rows} messages, one message per key per call (a publisher \
             that does not keep a key's order) / uniform keys"
        ),
        format!("{:.3} ({waves:.0} msg/s)", waves / uniform),
    );

    #[cfg(feature = "nats")]
    nats(cfg, &pool, res).await;
    pool.close().await;
}

/// A JetStream stream of its own, named `<prefix>_<id>` and capturing
/// `outboxbench.<id>.>`: the client, its JetStream context, the stream's
/// name and the id.
#[cfg(feature = "nats")]
pub(super) async fn bench_stream(
    prefix: &str,
) -> (
    async_nats::Client,
    async_nats::jetstream::Context,
    String,
    String,
) {
    let client = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("NATS at 127.0.0.1:4222");
    let js = async_nats::jetstream::new(client.clone());
    let id = uuid::Uuid::now_v7().simple().to_string();
    let stream = format!("{prefix}_{id}");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("outboxbench.{id}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    (client, js, stream, id)
}

/// One hot key through NATS JetStream against uniform keys through it.
#[cfg(feature = "nats")]
async fn nats(cfg: &Config, pool: &PgPool, res: &mut Results) {
    use outbox::publisher::NatsPublisher;

    let n = cfg.drain_rows / 5;
    let (client, js, stream, id) = bench_stream("OUTBOX_BENCH_HOT").await;
    let mut rates = Vec::new();
    for keys in [Keys::Uniform, Keys::One] {
        let topic = format!("outboxbench.{id}.hot");
        rates.push(drain_through(pool, &topic, n, keys, NatsPublisher::new(client.clone())).await);
    }
    js.delete_stream(&stream).await.unwrap();
    let (uniform, hot) = (rates[0], rates[1]);
    res.put("hotkey_nats_uniform_per_s", uniform);
    res.put("hotkey_nats_per_s", hot);
    res.put("hotkey_nats_ratio_vs_uniform", hot / uniform);
    res.row(
        format!("hot key through NATS JetStream, {n} messages of one key / 10,000 uniform keys"),
        format!("{:.2} ({hot:.0} vs {uniform:.0} msg/s)", hot / uniform),
    );
}
