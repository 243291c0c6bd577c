//! The Redis Streams publisher against real servers, with the relay on an
//! SQLite outbox: every test runs against the standalone server
//! (127.0.0.1:6379) and against a Redis Cluster of three masters with one
//! replica each (127.0.0.1:7101-7106, formed by `.ci/run` from
//! `.ci/redis-cluster/`); on the cluster, a run also loses the master of
//! its stream midway.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use outbox::publisher::{Envelope, RedisStreamsPublisher};
use outbox::NewMessage;
use redis::aio::ConnectionLike;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Value};
use support::broker::{self, candidate, TestBroker};
use support::redis_cluster;
use support::sqlite::{
    assert_dead_at_once, enqueue, enqueue_until_transient_failures, migrated, relay_until_drained,
};

/// Where a test publishes.
#[derive(Debug, Clone, Copy)]
struct Server {
    /// The nodes' addresses; a client may start from any.
    addrs: &'static [&'static str],
    cluster: bool,
    /// How to start it, for the message of a test that cannot reach it.
    start: &'static str,
}

const STANDALONE: Server = Server {
    addrs: &["127.0.0.1:6379"],
    cluster: false,
    start: "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
        --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
};

const CLUSTER: Server = Server {
    addrs: redis_cluster::NODES,
    cluster: true,
    start: redis_cluster::START,
};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of the database files.
const DB: &str = "outbox-redis";

// ---------------------------------------------------------------------------
// Redis

/// A connection to a standalone server or to a cluster, for the tests' own
/// reads and writes.
#[derive(Clone)]
enum Conn {
    Server(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Keys of one test live under a prefix of their own and are deleted when
/// this is dropped, also when the test fails.
struct TestKeys {
    server: Server,
    prefix: String,
    conn: Conn,
}

impl TestKeys {
    async fn new(server: Server) -> TestKeys {
        for addr in server.addrs {
            support::require_service(
                if server.cluster {
                    "Redis Cluster"
                } else {
                    "Redis"
                },
                addr,
                server.start,
            )
            .await;
        }
        let conn = if server.cluster {
            let client = redis::cluster::ClusterClient::new(urls(server.addrs)).unwrap();
            Conn::Cluster(
                client
                    .get_async_connection()
                    .await
                    .expect("connect to the Redis cluster"),
            )
        } else {
            let client = redis::Client::open(urls(server.addrs)[0].as_str()).unwrap();
            Conn::Server(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect to Redis"),
            )
        };
        TestKeys {
            server,
            prefix: format!("outboxtest:{}:", uuid::Uuid::now_v7().simple()),
            conn,
        }
    }

    /// A publisher to the test's server whose streams and dedupe keys live
    /// under the prefix.
    fn publisher(&self) -> RedisStreamsPublisher {
        let publisher = if self.server.cluster {
            RedisStreamsPublisher::cluster(urls(self.server.addrs)).unwrap()
        } else {
            RedisStreamsPublisher::from_url(&urls(self.server.addrs)[0]).unwrap()
        };
        self.under_prefix(publisher)
    }

    fn under_prefix(&self, publisher: RedisStreamsPublisher) -> RedisStreamsPublisher {
        publisher
            .with_stream_prefix(format!("{}stream:", self.prefix))
            .with_dedupe_prefix(format!("{}dedupe:", self.prefix))
    }

    /// The stream of `topic`, named as the publisher names it.
    fn stream(&self, topic: &str) -> String {
        if self.server.cluster {
            format!("{}stream:{{{topic}}}", self.prefix)
        } else {
            format!("{}stream:{topic}", self.prefix)
        }
    }

    /// The dedupe key of message `id` on `topic`, named as the publisher
    /// names it.
    fn dedupe_key(&self, topic: &str, id: impl std::fmt::Display) -> String {
        if self.server.cluster {
            format!("{}dedupe:{{{topic}}}:{id}", self.prefix)
        } else {
            format!("{}dedupe:{id}", self.prefix)
        }
    }

    /// The stream's length; asks again while the cluster cannot answer (a
    /// failover), for up to a minute.
    async fn len(&self, topic: &str) -> u64 {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match self.conn.clone().xlen(self.stream(topic)).await {
                Ok(n) => return n,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "XLEN: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    /// Reads the whole stream in pages of 5,000 entries (XRANGE).
    async fn read_all(&self, topic: &str) -> Vec<StreamId> {
        let mut out: Vec<StreamId> = Vec::new();
        loop {
            let start = out
                .last()
                .map_or_else(|| "-".to_owned(), |e| format!("({}", e.id));
            let page: StreamRangeReply = self
                .conn
                .clone()
                .xrange_count(self.stream(topic), start, "+", 5000)
                .await
                .unwrap();
            if page.ids.is_empty() {
                return out;
            }
            out.extend(page.ids);
        }
    }
}

fn urls(addrs: &[&str]) -> Vec<String> {
    addrs.iter().map(|a| format!("redis://{a}")).collect()
}

impl Drop for TestKeys {
    fn drop(&mut self) {
        // Each node on its own: a replica's copies go with its master's.
        let pattern = format!("{}*", self.prefix);
        for addr in self.server.addrs {
            let Ok(client) = redis::Client::open(format!("redis://{addr}")) else {
                continue;
            };
            let Ok(mut con) = client.get_connection() else {
                continue;
            };
            let keys: Vec<String> = redis::Commands::scan_match::<_, String>(&mut con, &pattern)
                // Keys that fail to decode are skipped: cleanup deletes what it can.
                .map(|it| it.filter_map(Result::ok).collect())
                .unwrap_or_default();
            // One by one: on a cluster the keys of one node span slots, and
            // a replica refuses (MOVED) what its master deletes.
            for key in keys {
                let _: Result<(), _> = redis::Commands::del(&mut con, key);
            }
        }
    }
}

#[async_trait]
impl TestBroker for TestKeys {
    type Publisher = RedisStreamsPublisher;
    const NAME: &'static str = "Redis Streams";

    fn publisher(&self) -> RedisStreamsPublisher {
        TestKeys::publisher(self)
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

async fn relay_appends_to_streams_with_fields(server: Server) {
    let keys = TestKeys::new(server).await;
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
        let guard_key = keys.dedupe_key("candidates", ids[n]);
        let guard: Option<String> = conn.get(&guard_key).await.unwrap();
        assert_eq!(guard.as_deref(), Some(e.id.as_str()));
        let ttl: i64 = conn.pttl(&guard_key).await.unwrap();
        assert!(ttl > 0 && ttl <= 24 * 3600 * 1000, "{ttl}");
    }
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

async fn cloudevents_structured_mode_and_trimming(server: Server) {
    let keys = TestKeys::new(server).await;
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
async fn a_message_sent_twice_is_appended_once(server: Server) {
    broker::a_message_sent_twice_is_stored_once(&TestKeys::new(server).await).await;
}

/// Through proxies cut all at once (on a cluster, one per node, and the
/// client maps each node the cluster names to its proxy).
async fn nothing_is_lost_while_the_server_is_unreachable(server: Server) {
    let keys = TestKeys::new(server).await;
    let proxy = support::Proxy::start(server.addrs[0]).await;
    let publisher = if server.cluster {
        let mut map = HashMap::new();
        for addr in server.addrs {
            let beside = proxy.beside(addr).await;
            map.insert(
                addr.parse::<redis::cluster::NodeAddress>().unwrap(),
                beside.addr.to_string().parse().unwrap(),
            );
        }
        let client = redis::cluster::ClusterClient::builder([proxy.url("redis")])
            .node_address_map(map)
            .build()
            .unwrap();
        RedisStreamsPublisher::new_cluster(client)
    } else {
        RedisStreamsPublisher::from_url(&proxy.url("redis")).unwrap()
    };
    let publisher = keys
        .under_prefix(publisher)
        .with_timeout(Duration::from_secs(1));
    broker::nothing_is_lost_while_unreachable(&keys, &proxy, publisher, async || {}).await;
}

async fn rejected_messages_are_dead_lettered(server: Server) {
    let keys = TestKeys::new(server).await;
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
        .get(keys.dedupe_key("not-a-stream", wrong_type_id))
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

/// A batch spans several script calls (a hundred messages each); the
/// messages the server refuses, scattered through it, fail alone: the
/// others of their call are appended once each, in order, with their
/// guards, and the refused ones leave no guard behind.
async fn refusals_amid_a_batch_fail_only_their_own_messages(server: Server) {
    let keys = TestKeys::new(server).await;
    let (db, outbox) = migrated(DB).await;
    let mut conn = keys.conn.clone();
    let _: () = conn.set(keys.stream("not-a-stream"), "oops").await.unwrap();
    let refused = |n: u32| n % 100 == 37;
    let messages: Vec<NewMessage> = (0..450)
        .map(|n| {
            candidate(
                if refused(n) {
                    "not-a-stream"
                } else {
                    "candidates"
                },
                n,
            )
        })
        .collect();
    let ids: Vec<_> = messages.iter().map(|m| m.id()).collect();
    enqueue(&db, &outbox, messages).await;

    relay_until_drained(&outbox, keys.publisher(), "the outbox to drain", TIMEOUT).await;

    let dead = outbox.dead_letters(100).await.unwrap();
    let dead_ids: HashSet<_> = dead.iter().map(|d| d.id()).collect();
    let expected: HashSet<_> = (0..450)
        .filter(|&n| refused(n))
        .map(|n| ids[n as usize])
        .collect();
    assert_eq!(dead_ids, expected, "{dead:?}");
    for d in &dead {
        assert_dead_at_once(d, "not a stream");
        let guard: Option<String> = conn
            .get(keys.dedupe_key("not-a-stream", d.id()))
            .await
            .unwrap();
        assert_eq!(guard, None, "a refused message left its guard");
    }
    let entries = keys.read("candidates").await;
    let appended: Vec<String> = entries.iter().map(|e| field(e, "id").unwrap()).collect();
    let fine: Vec<String> = (0..450)
        .filter(|&n| !refused(n))
        .map(|n| ids[n as usize].to_string())
        .collect();
    assert_eq!(appended, fine, "each accepted message once, in order");
    for e in entries.iter().step_by(97) {
        let id = field(e, "id").unwrap();
        let guard: Option<String> = conn.get(keys.dedupe_key("candidates", &id)).await.unwrap();
        assert_eq!(guard.as_deref(), Some(e.id.as_str()), "the guard of {id}");
    }
}

async fn drains_a_large_backlog(server: Server) {
    broker::drains_a_large_backlog(&TestKeys::new(server).await).await;
}

/// On the cluster, each master's replica acknowledges every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acks_on_the_cluster_confirm_each_batch() {
    let _shared = NODES_UP.read().await;
    let keys = TestKeys::new(CLUSTER).await;
    let (_db, outbox, ids) = broker::with_candidates(DB, 0..20).await;
    let publisher = keys
        .publisher()
        .with_replica_acks(1, Duration::from_secs(1));
    relay_until_drained(&outbox, publisher, "the outbox to drain", TIMEOUT).await;
    let got: Vec<String> = keys.consume_ids(20).await;
    assert_eq!(got, ids.iter().map(ToString::to_string).collect::<Vec<_>>());
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

/// The standalone server has no replica: a batch is appended but never
/// confirmed, and its retries append nothing more; without asking for
/// acknowledgements it is confirmed at once, still appended once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acks_without_a_replica_confirm_nothing() {
    let keys = TestKeys::new(STANDALONE).await;
    let (db, outbox) = migrated(DB).await;
    let publisher = keys
        .publisher()
        .with_replica_acks(1, Duration::from_millis(100));
    let relay =
        support::sqlite::relay(&outbox, publisher, support::fast_retry().max_attempts(1000));
    enqueue_until_transient_failures(&db, &outbox, vec![candidate("candidates", 1)], 3, TIMEOUT)
        .await;
    relay.shutdown().await.unwrap();
    let error: String = sqlx::query_scalar("SELECT last_error FROM outbox_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        error.contains("0 of the 1 replicas asked for acknowledged"),
        "{error}"
    );
    assert_eq!(
        keys.len("candidates").await,
        1,
        "appended once, retries found it"
    );

    relay_until_drained(&outbox, keys.publisher(), "the outbox to drain", TIMEOUT).await;
    assert_eq!(keys.len("candidates").await, 1);
}

/// Held shared by the tests on the cluster, alone by the one that kills a
/// master: the other tests of this binary run beside each other, not beside
/// a failover.
static NODES_UP: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Messages of the master-loss run: `OUTBOX_REDIS_CLUSTER_MESSAGES`, or
/// 20,000 (`OUTBOX_REDIS_CLUSTER_MESSAGES=100000 cargo test --features
/// redis --test publisher_redis master` for a longer run).
fn master_loss_messages() -> usize {
    std::env::var("OUTBOX_REDIS_CLUSTER_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Replica acknowledgements the master-loss run asks for:
/// `OUTBOX_REDIS_CLUSTER_REPLICA_ACKS`, or 1. With 0 the run has the loss
/// window of asynchronous replication, and the same assertions (they
/// then fail if the window was hit, naming the messages lost).
fn master_loss_replica_acks() -> u32 {
    std::env::var("OUTBOX_REDIS_CLUSTER_REPLICA_ACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// A run through the cluster during which the master that holds the
/// stream is killed (SIGKILL) a third of the way in; its replica is
/// promoted, and the killed node is started again and rejoins as a
/// replica. With each batch confirmed only once a replica has it, every
/// message is in the stream exactly once at the end, per key in order:
/// the relay sent again what the lost master had not confirmed, and the
/// promoted replica had the dedupe keys of what it had confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_loses_the_master_of_a_stream_and_keeps_each_message_once_in_order() {
    let _alone = NODES_UP.write().await;
    let keys = TestKeys::new(CLUSTER).await;
    redis_cluster::wait_until_whole("the cluster to be whole before the run").await;
    let (db, outbox) = migrated(DB).await;
    let n = master_loss_messages();
    let acks = master_loss_replica_acks();
    let key_count = 200;
    let mut sent = HashSet::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let messages: Vec<NewMessage> = chunk
            .iter()
            .map(|i| {
                NewMessage::json(
                    "orders",
                    &serde_json::json!({ "key": i % key_count, "n": i / key_count }),
                )
                .unwrap()
                .with_partition_key(format!("order-{}", i % key_count))
            })
            .collect();
        sent.extend(messages.iter().map(|m| m.id().to_string()));
        enqueue(&db, &outbox, messages).await;
    }
    let started = std::time::Instant::now();
    let relay = outbox::Relay::builder(
        outbox.clone(),
        keys.publisher()
            .with_timeout(Duration::from_secs(2))
            .with_replica_acks(acks, Duration::from_millis(500)),
    )
    .batch_size(500)
    // Retried through the failover for as long as it takes: none may be
    // dead-lettered (and block its key) because a master was lost.
    .retry(
        outbox::RetryPolicy::new()
            .initial_delay(Duration::from_millis(50))
            .max_delay(Duration::from_secs(1))
            .max_attempts(10_000),
    )
    .spawn()
    .unwrap();

    support::wait_for("a third of the run stored", TIMEOUT, || async {
        keys.len("orders").await >= (n / 3) as u64
    })
    .await;
    let slot = redis_cluster::slot_of(&keys.stream("orders")).await;
    let master = redis_cluster::master_of(slot, None)
        .await
        .expect("a master serves the stream's slot");
    let stored_at_kill = keys.len("orders").await;
    assert!(
        stored_at_kill < n as u64,
        "the run ended before the master was lost: nothing was tested"
    );
    redis_cluster::kill(master);
    let killed_at = started.elapsed();
    let promoted = redis_cluster::failed_over(slot, master).await;
    let failed_over_after = started.elapsed() - killed_at;
    redis_cluster::restart(master).await;
    redis_cluster::wait_until_whole("the killed master to rejoin as a replica").await;

    support::wait_for("the outbox drained", Duration::from_secs(600), || async {
        outbox.pending_count().await.unwrap() == 0
    })
    .await;
    let elapsed = started.elapsed();
    relay.shutdown().await.unwrap();
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    assert!(outbox.blocked_keys().await.unwrap().is_empty());

    // Every message was confirmed (the outbox is empty): each must be in
    // the stream once, per key in order.
    let entries = keys.read_all("orders").await;
    let mut seen = HashSet::new();
    let mut twice = Vec::new();
    let mut last: HashMap<u64, i64> = HashMap::new();
    for e in &entries {
        let id = field(e, "id").expect("an id");
        assert!(sent.contains(&id), "{id} was never sent");
        if !seen.insert(id.clone()) {
            twice.push(id);
            continue;
        }
        let body: serde_json::Value =
            serde_json::from_slice(&e.get::<Vec<u8>>("payload").unwrap()).unwrap();
        let (key, ordinal) = (body["key"].as_u64().unwrap(), body["n"].as_i64().unwrap());
        let before = last.insert(key, ordinal).unwrap_or(-1);
        assert!(
            before < ordinal,
            "key {key}: {ordinal} appended after {before}"
        );
    }
    let lost: Vec<&String> = sent.iter().filter(|id| !seen.contains(*id)).collect();
    println!(
        "Redis Cluster, {n} messages, {acks} replica acknowledgement(s) asked: master \
         127.0.0.1:{master} killed after {killed_at:?} ({stored_at_kill} stored), replica \
         127.0.0.1:{promoted} promoted {failed_over_after:?} later; drained after {elapsed:?}; \
         {} lost, {} appended twice",
        lost.len(),
        twice.len()
    );
    assert!(twice.is_empty(), "appended twice: {twice:?}");
    assert!(lost.is_empty(), "confirmed but lost: {lost:?}");
    assert_eq!(entries.len(), n);
    redis_cluster::wait_until_whole("the cluster to be whole after the run").await;
}

/// Braces that would part a message's two keys: a prefix with one is
/// refused before the relay starts, and by every batch transiently (the
/// messages wait for a corrected publisher); a topic that starts with `}`
/// is dead-lettered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn braces_that_would_part_a_messages_keys_are_refused_on_the_cluster() {
    let _shared = NODES_UP.read().await;
    let keys = TestKeys::new(CLUSTER).await;
    let braced = keys
        .publisher()
        .with_stream_prefix(format!("{}{{tenant}}:", keys.prefix));
    match braced.validate() {
        Err(outbox::Error::InvalidConfig { field, reason }) => {
            assert_eq!(field, "stream_prefix");
            assert!(reason.contains("different hash slots"), "{reason}");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    keys.publisher().validate().unwrap();

    let (db, outbox) = migrated(DB).await;
    let relay = support::sqlite::relay(&outbox, braced, support::fast_retry().max_attempts(1000));
    let waiting = candidate("candidates", 1);
    let odd = candidate("}odd", 2);
    let odd_id = odd.id();
    enqueue_until_transient_failures(&db, &outbox, vec![waiting], 2, TIMEOUT).await;
    relay.shutdown().await.unwrap();
    let error: String = sqlx::query_scalar("SELECT last_error FROM outbox_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        error.contains("hash-slot co-location") && error.contains("stream_prefix"),
        "{error}"
    );
    assert_eq!(keys.len("candidates").await, 0);

    enqueue(&db, &outbox, vec![odd]).await;
    relay_until_drained(&outbox, keys.publisher(), "the outbox to drain", TIMEOUT).await;
    assert_eq!(
        keys.len("candidates").await,
        1,
        "the waiting message went through"
    );
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id(), odd_id);
    assert_dead_at_once(&dead[0], "different Redis Cluster slots");
}

/// Each test above, once per server.
macro_rules! on_each_server {
    ($($test:ident),* $(,)?) => {
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::STANDALONE).await;
                }
            )*
        }

        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let _shared = super::NODES_UP.read().await;
                    super::$test(super::CLUSTER).await;
                }
            )*
        }
    };
}

on_each_server!(
    relay_appends_to_streams_with_fields,
    cloudevents_structured_mode_and_trimming,
    a_message_sent_twice_is_appended_once,
    nothing_is_lost_while_the_server_is_unreachable,
    rejected_messages_are_dead_lettered,
    refusals_amid_a_batch_fail_only_their_own_messages,
    drains_a_large_backlog
);
