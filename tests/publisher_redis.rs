//! The Redis Streams publisher against a real server (127.0.0.1:6379),
//! with the relay on an SQLite outbox.

mod support;

use std::time::Duration;

use async_trait::async_trait;
use outbox::publisher::{Envelope, RedisStreamsPublisher};
use outbox::NewMessage;
use redis::streams::{StreamId, StreamReadReply};
use redis::AsyncCommands;
use support::broker::{self, candidate, TestBroker};
use support::sqlite::{assert_dead_at_once, enqueue, migrated, relay_until_drained};

const REDIS: &str = "127.0.0.1:6379";
const START_REDIS: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
    --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";
const TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of the database files.
const DB: &str = "outbox-redis";

// ---------------------------------------------------------------------------
// Redis

/// Keys of one test live under a prefix of their own and are deleted when
/// this is dropped, also when the test fails.
struct TestKeys {
    prefix: String,
    conn: redis::aio::MultiplexedConnection,
}

impl TestKeys {
    async fn new() -> TestKeys {
        support::require_service("Redis", REDIS, START_REDIS).await;
        let client = redis::Client::open(format!("redis://{REDIS}")).unwrap();
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to Redis");
        TestKeys {
            prefix: format!("outboxtest:{}:", uuid::Uuid::now_v7().simple()),
            conn,
        }
    }

    /// A publisher whose streams and dedupe keys live under the prefix.
    fn publisher_at(&self, addr: &str) -> RedisStreamsPublisher {
        RedisStreamsPublisher::from_url(&format!("redis://{addr}"))
            .unwrap()
            .with_stream_prefix(format!("{}stream:", self.prefix))
            .with_dedupe_prefix(format!("{}dedupe:", self.prefix))
    }

    fn stream(&self, topic: &str) -> String {
        format!("{}stream:{topic}", self.prefix)
    }

    async fn len(&self, topic: &str) -> u64 {
        self.conn.clone().xlen(self.stream(topic)).await.unwrap()
    }

    /// Reads the whole stream with XREAD, as a consumer starting at 0.
    async fn read(&self, topic: &str) -> Vec<StreamId> {
        let reply: StreamReadReply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100_000)
            .arg("STREAMS")
            .arg(self.stream(topic))
            .arg("0")
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        reply.keys.into_iter().flat_map(|k| k.ids).collect()
    }
}

impl Drop for TestKeys {
    fn drop(&mut self) {
        let pattern = format!("{}*", self.prefix);
        let Ok(client) = redis::Client::open(format!("redis://{REDIS}")) else {
            return;
        };
        let Ok(mut con) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::Commands::scan_match::<_, String>(&mut con, &pattern)
            // Keys that fail to decode are skipped: cleanup deletes what it can.
            .map(|it| it.filter_map(Result::ok).collect())
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::Commands::del(&mut con, chunk);
        }
    }
}

#[async_trait]
impl TestBroker for TestKeys {
    type Publisher = RedisStreamsPublisher;
    const NAME: &'static str = "Redis Streams";

    fn publisher(&self) -> RedisStreamsPublisher {
        self.publisher_at(REDIS)
    }

    async fn count(&self) -> u64 {
        self.len("candidates").await
    }

    async fn consume_ids(&self, n: usize) -> Vec<String> {
        let entries = self.read("candidates").await;
        assert!(entries.len() >= n, "{} of {n} entries", entries.len());
        entries
            .iter()
            .take(n)
            .map(|e| field(e, "id").unwrap())
            .collect()
    }
}

fn field(e: &StreamId, name: &str) -> Option<String> {
    e.get::<String>(name)
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_appends_to_streams_with_fields() {
    let keys = TestKeys::new().await;
    let (_db, outbox, ids) = broker::with_candidates(DB, 0..5).await;

    relay_until_drained(&outbox, keys.publisher(), "the outbox to drain", TIMEOUT).await;

    let entries = keys.read("candidates").await;
    assert_eq!(entries.len(), 5);
    for (n, e) in entries.iter().enumerate() {
        assert_eq!(field(e, "id"), Some(ids[n].to_string()));
        assert_eq!(
            field(e, "event_type").as_deref(),
            Some("CandidateStatusChanged")
        );
        assert_eq!(field(e, "schema_version").as_deref(), Some("2"));
        assert_eq!(field(e, "partition_key"), Some(format!("candidate-{n}")));
        assert_eq!(
            field(e, "content_type").as_deref(),
            Some("application/json")
        );
        assert!(field(e, "position").is_some());
        assert!(field(e, "created_at").is_some());
        let headers: serde_json::Value =
            serde_json::from_str(&field(e, "headers").unwrap()).unwrap();
        assert_eq!(headers["traceparent"], format!("00-trace-{n}-01"));
        let payload: serde_json::Value =
            serde_json::from_slice(&e.get::<Vec<u8>>("payload").unwrap()).unwrap();
        assert_eq!(payload["candidate_id"], n);

        // The dedupe key names the entry and expires.
        let mut conn = keys.conn.clone();
        let guard: Option<String> = conn
            .get(format!("{}dedupe:{}", keys.prefix, ids[n]))
            .await
            .unwrap();
        assert_eq!(guard.as_deref(), Some(e.id.as_str()));
        let ttl: i64 = conn
            .pttl(format!("{}dedupe:{}", keys.prefix, ids[n]))
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 24 * 3600 * 1000, "{ttl}");
    }
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_structured_mode_and_trimming() {
    let keys = TestKeys::new().await;
    let (_db, outbox, ids) = broker::with_candidates(DB, [9]).await;
    let id = ids[0].to_string();

    let publisher = keys
        .publisher()
        .with_envelope(Envelope::CloudEventsStructured {
            source: "/recruiting/candidates".into(),
        })
        .with_max_len(1000);
    relay_until_drained(&outbox, publisher, "the outbox to drain", TIMEOUT).await;

    let entries = keys.read("candidates").await;
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(field(e, "id"), Some(id.clone()));
    assert_eq!(
        field(e, "content_type").as_deref(),
        Some("application/cloudevents+json")
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&e.get::<Vec<u8>>("payload").unwrap()).unwrap();
    assert_eq!(doc["specversion"], "1.0");
    assert_eq!(doc["id"], id);
    assert_eq!(doc["source"], "/recruiting/candidates");
    assert_eq!(doc["type"], "CandidateStatusChanged");
    assert_eq!(doc["subject"], "candidate-9");
    assert_eq!(doc["data"]["candidate_id"], 9);
}

/// The publisher's guard appends each message id once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_twice_is_appended_once() {
    broker::a_message_sent_twice_is_stored_once(&TestKeys::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_the_server_is_unreachable() {
    let keys = TestKeys::new().await;
    let proxy = support::Proxy::start(REDIS).await;
    let publisher = keys
        .publisher_at(&proxy.addr.to_string())
        .with_timeout(Duration::from_secs(1));
    broker::nothing_is_lost_while_unreachable(&keys, &proxy, publisher, async || {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered() {
    let keys = TestKeys::new().await;
    let (db, outbox) = migrated(DB).await;
    // Over the configured maximum payload.
    let too_big = NewMessage::bytes("candidates", vec![b'x'; 2048]);
    // The stream key holds a string: XADD fails with WRONGTYPE.
    let mut conn = keys.conn.clone();
    let _: () = conn.set(keys.stream("not-a-stream"), "oops").await.unwrap();
    let wrong_type = candidate("not-a-stream", 1);
    let fine = candidate("candidates", 2);
    let (too_big_id, wrong_type_id, fine_id) = (too_big.id(), wrong_type.id(), fine.id());
    enqueue(&db, &outbox, vec![too_big, wrong_type, fine]).await;

    let publisher = keys.publisher().with_max_payload(1024);
    relay_until_drained(&outbox, publisher, "the outbox to drain", TIMEOUT).await;

    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let big = dead.iter().find(|d| d.id() == too_big_id).unwrap();
    assert_dead_at_once(big, "over the configured maximum of 1024");
    let wrong = dead.iter().find(|d| d.id() == wrong_type_id).unwrap();
    assert_dead_at_once(wrong, "not a stream");
    // The failed XADD left no dedupe key behind: a replay is not taken for
    // a duplicate.
    let guard: Option<String> = conn
        .get(format!("{}dedupe:{}", keys.prefix, wrong_type_id))
        .await
        .unwrap();
    assert_eq!(guard, None);

    let entries = keys.read("candidates").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(field(&entries[0], "id"), Some(fine_id.to_string()));

    // Fix the key and replay: the dead letter goes through.
    let _: () = conn.del(keys.stream("not-a-stream")).await.unwrap();
    outbox.replay_dead_letter(wrong_type_id).await.unwrap();
    relay_until_drained(&outbox, keys.publisher(), "the replay", TIMEOUT).await;
    assert_eq!(keys.len("not-a-stream").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_a_large_backlog() {
    broker::drains_a_large_backlog(&TestKeys::new().await).await;
}
