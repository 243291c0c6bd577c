//! End to end through real brokers: the relay draining a backlog into
//! NATS JetStream, RabbitMQ and Redis Streams, against the broker's own
//! publish ceiling (pipelined publishes awaiting acks/confirms/replies)
//! measured in the same run; and into Kafka's mock cluster (librdkafka's
//! own, in process: no raw ceiling to hold it against), its rate alone.

use super::*;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use outbox::publisher::{NatsPublisher, RabbitMqPublisher};

/// The exchange and queue declaration the AMQP tests use too.
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/support/amqp.rs"]
mod amqp;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

async fn relay_into<P: Publisher>(pool: &PgPool, topic: &str, n: i64, publisher: P) -> Drained {
    let outbox = PgOutbox::new(pool.clone());
    sqlx::query(
        "INSERT INTO outbox.messages (id, topic, partition_key, event_type, schema_version, \
         payload, content_type) SELECT gen_random_uuid(), $1, 'candidate-' || (g % 10000), \
         'CandidateHired', 1, convert_to('{\"candidate_id\": ' || g || '}', 'UTF8'), \
         'application/json' FROM generate_series(1, $2) g",
    )
    .bind(topic)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
    let timed = Timed::new(publisher);
    let cpu = busy_cpu_secs();
    let relay = Relay::builder(outbox.clone(), timed.clone())
        .batch_size(1000)
        .spawn()
        .unwrap();
    let rate = timed.rate_after(n as u64, &outbox).await;
    let cpu = busy_cpu_secs() - cpu;
    relay.shutdown().await.unwrap();
    assert_eq!(outbox.pending_count().await.unwrap(), 0);
    Drained {
        rate,
        cpu_us: cpu * 1e6 / n as f64,
    }
}

/// What a drain (or a raw loop) measured: messages per second, and the
/// machine's busy CPU time per message in microseconds.
#[derive(Clone, Copy)]
struct Drained {
    rate: f64,
    cpu_us: f64,
}

/// CPU time the whole machine has spent busy since boot (user, nice,
/// system, irq, softirq, steal), in seconds, from `/proc/stat`; 0 where
/// there is none. Broker, database and relay share the machine's cores:
/// where they are all busy, a relay's ratio cannot beat the raw loop's
/// CPU per message over the relay's.
fn busy_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal, in USER_HZ (100 on
    // Linux).
    [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<f64>()
        / 100.0
}

/// The broker's own ceiling: `n` publishes through `publish`, which
/// sends one message and gives back what acknowledges (or confirms) it;
/// those are awaited a thousand at a time. Messages per second.
async fn raw_publish_rate<A, T, E, F>(
    n: i64,
    mut publish: impl AsyncFnMut() -> Result<A, F>,
) -> Drained
where
    A: std::future::IntoFuture<Output = Result<T, E>>,
    E: std::fmt::Debug,
    F: std::fmt::Debug,
{
    let cpu = busy_cpu_secs();
    let start = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(publish().await.unwrap().into_future());
        if pending.len() == 1000 || i == n - 1 {
            for ack in pending.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    Drained {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        cpu_us: (busy_cpu_secs() - cpu) * 1e6 / n as f64,
    }
}

/// Records the relay's rate against the broker's raw rate under `key`,
/// and the machine's CPU time per message in each.
fn record(res: &mut Results, key: &str, what: String, raw: Drained, relayed: Drained) {
    res.put(&format!("broker_{key}_raw_per_s"), raw.rate);
    res.put(&format!("broker_{key}_relay_per_s"), relayed.rate);
    res.put(&format!("broker_{key}_ratio"), relayed.rate / raw.rate);
    res.put(&format!("broker_{key}_raw_cpu_us_per_msg"), raw.cpu_us);
    res.put(
        &format!("broker_{key}_relay_cpu_us_per_msg"),
        relayed.cpu_us,
    );
    res.row(
        what,
        format!(
            "{:.2} ({:.0} vs {:.0} events/s; machine CPU {:.1} vs {:.1} µs/event)",
            relayed.rate / raw.rate,
            relayed.rate,
            raw.rate,
            relayed.cpu_us,
            raw.cpu_us
        ),
    );
}

/// Whether `--brokers=` (default: all) names `broker`.
fn wanted(broker: &str) -> bool {
    arg("brokers").is_none_or(|b| b.split(',').any(|x| x == broker))
}

pub(super) async fn run(cfg: &Config, res: &mut Results) {
    let n = cfg.drain_rows / 5;
    let pool = fresh_db("outbox_bench_brokers").await;
    PgOutbox::new(pool.clone()).migrate().await.unwrap();
    let id = uuid::Uuid::now_v7().simple().to_string();
    if wanted("nats") {
        nats(&pool, n, res).await;
    }
    if wanted("rabbitmq") {
        rabbitmq(&pool, n, &id, res).await;
    }
    #[cfg(feature = "redis")]
    if wanted("redis") {
        redis_streams(&pool, n, &id, res).await;
    }
    #[cfg(feature = "kafka")]
    if wanted("kafka") {
        kafka(&pool, n, res).await;
    }
    pool.close().await;
}

/// The headers the relay's plain envelope puts on message `i` (its
/// metadata), for a raw loop that carries what the relay carries.
fn relay_like_headers(i: u64) -> Vec<(&'static str, String)> {
    vec![
        ("outbox-id", uuid::Uuid::now_v7().to_string()),
        ("outbox-event-type", "CandidateHired".to_owned()),
        ("outbox-schema-version", "1".to_owned()),
        ("outbox-partition-key", format!("candidate-{}", i % 10_000)),
        ("outbox-position", i.to_string()),
        (
            "outbox-created-at",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
    ]
}

/// Records the relay against a raw loop whose messages carry the relay's
/// headers: what is left of the gap once the messages weigh the same.
fn record_same_headers(res: &mut Results, key: &str, what: String, raw: Drained, relayed: Drained) {
    res.put(&format!("broker_{key}_raw_headers_per_s"), raw.rate);
    res.put(
        &format!("broker_{key}_raw_headers_cpu_us_per_msg"),
        raw.cpu_us,
    );
    res.put(
        &format!("broker_{key}_ratio_vs_raw_headers"),
        relayed.rate / raw.rate,
    );
    res.row(
        what,
        format!(
            "{:.2} ({:.0} events/s; machine CPU {:.1} µs/event)",
            relayed.rate / raw.rate,
            raw.rate,
            raw.cpu_us
        ),
    );
}

/// NATS JetStream: the relay against pipelined publishes, each with its
/// `Nats-Msg-Id`.
async fn nats(pool: &PgPool, n: i64, res: &mut Results) {
    let body = br#"{"candidate_id": 1}"#.to_vec();
    let (client, js, stream, id) = super::hotkeys::bench_stream("OUTBOX_BENCH").await;
    let raw = raw_publish_rate(n, async || {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
        js.publish_with_headers(
            format!("outboxbench.{id}.raw"),
            headers,
            body.clone().into(),
        )
        .await
    })
    .await;
    let mut i = 0u64;
    let raw_headers = raw_publish_rate(n, async || {
        i += 1;
        let mut headers = async_nats::HeaderMap::new();
        for (k, v) in relay_like_headers(i) {
            headers.insert(k, v.as_str());
        }
        headers.insert("Content-Type", "application/json");
        headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
        js.publish_with_headers(
            format!("outboxbench.{id}.rawheaders"),
            headers,
            body.clone().into(),
        )
        .await
    })
    .await;
    let relayed = relay_into(
        pool,
        &format!("outboxbench.{id}.relay"),
        n,
        NatsPublisher::new(client.clone()),
    )
    .await;
    js.delete_stream(&stream).await.unwrap();
    record(
        res,
        "nats",
        format!("NATS JetStream, {n} messages: relay / raw pipelined publish"),
        raw,
        relayed,
    );
    record_same_headers(
        res,
        "nats",
        "NATS JetStream: relay / raw pipelined publish carrying the relay's headers".to_owned(),
        raw_headers,
        relayed,
    );
}

/// RabbitMQ: the relay against publishes with confirms, persistent.
async fn rabbitmq(pool: &PgPool, n: i64, id: &str, res: &mut Results) {
    let body = br#"{"candidate_id": 1}"#.to_vec();
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ at 127.0.0.1:5672");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let exchange = format!("outbox.bench.{id}");
    let queue = format!("outbox.bench.{id}.q");
    amqp::declare_bound_queue(&ch, &exchange, &queue, "#", amqp::Lifetime::Durable)
        .await
        .unwrap();
    // A persistent, mandatory publish under `key`.
    let publish = async |key: &str, props: BasicProperties| {
        ch.basic_publish(
            exchange.as_str().into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &body,
            props.with_delivery_mode(2),
        )
        .await
    };
    let raw = raw_publish_rate(n, async || {
        let id = ShortString::from(uuid::Uuid::now_v7().to_string());
        publish("raw", BasicProperties::default().with_message_id(id)).await
    })
    .await;
    let mut i = 0u64;
    let raw_headers = raw_publish_rate(n, async || {
        i += 1;
        let mut headers = FieldTable::default();
        for (k, v) in relay_like_headers(i) {
            headers.insert(k.into(), AMQPValue::LongString(v.into()));
        }
        let props = BasicProperties::default()
            .with_message_id(ShortString::from(uuid::Uuid::now_v7().to_string()))
            .with_content_type("application/json".into())
            .with_type("CandidateHired".into())
            .with_timestamp(chrono::Utc::now().timestamp() as u64)
            .with_headers(headers);
        publish("rawheaders", props).await
    })
    .await;
    let relayed = relay_into(
        pool,
        "relay",
        n,
        RabbitMqPublisher::new(AMQP, exchange.clone()),
    )
    .await;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    record(
        res,
        "rabbitmq",
        format!("RabbitMQ, {n} persistent messages: relay / raw publish with confirms"),
        raw,
        relayed,
    );
    record_same_headers(
        res,
        "rabbitmq",
        "RabbitMQ: relay / raw publish with confirms carrying the relay's headers".to_owned(),
        raw_headers,
        relayed,
    );
}

/// Redis Streams: the relay (an atomic deduplication guard and `XADD` per
/// message) against raw `XADD`s pipelined a thousand at a time.
#[cfg(feature = "redis")]
async fn redis_streams(pool: &PgPool, n: i64, id: &str, res: &mut Results) {
    use outbox::publisher::RedisStreamsPublisher;

    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379");
    let raw_key = format!("outboxbench:{id}:raw");
    let cpu = busy_cpu_secs();
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let chunk = 1000.min(n - sent);
        let mut pipe = redis::pipe();
        for _ in 0..chunk {
            pipe.cmd("XADD")
                .arg(&raw_key)
                .arg("*")
                .arg("id")
                .arg(uuid::Uuid::now_v7().to_string())
                .arg("payload")
                .arg(br#"{"candidate_id": 1}"#.as_slice());
        }
        let _: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
        sent += chunk;
    }
    let raw = Drained {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        cpu_us: (busy_cpu_secs() - cpu) * 1e6 / n as f64,
    };
    let prefix = format!("outboxbench:{id}:");
    let relayed = relay_into(
        pool,
        "relay",
        n,
        RedisStreamsPublisher::new(client.clone()).with_stream_prefix(&prefix),
    )
    .await;
    let _: () = redis::cmd("DEL")
        .arg(&raw_key)
        .arg(format!("{prefix}relay"))
        .query_async(&mut conn)
        .await
        .unwrap();
    record(
        res,
        "redis",
        format!("Redis Streams, {n} messages: relay / raw pipelined XADD"),
        raw,
        relayed,
    );
}

/// Kafka's mock cluster (one broker, in this process): the relay's rate.
#[cfg(feature = "kafka")]
async fn kafka(pool: &PgPool, n: i64, res: &mut Results) {
    use outbox::publisher::KafkaPublisher;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("relay", 3, 1).unwrap();
    let publisher = KafkaPublisher::new(cluster.bootstrap_servers()).unwrap();
    let relayed = relay_into(pool, "relay", n, publisher).await;
    res.put("broker_kafka_per_s", relayed.rate);
    res.put("broker_kafka_relay_cpu_us_per_msg", relayed.cpu_us);
    res.row(
        format!("Kafka (librdkafka's mock cluster, in process), {n} messages: relay"),
        format!(
            "{:.0} events/s (machine CPU {:.1} µs/event)",
            relayed.rate, relayed.cpu_us
        ),
    );
}
