//! The NATS JetStream publisher against real nats-servers, with the relay
//! on an SQLite outbox: every test runs against the standalone server
//! (127.0.0.1:4222, JetStream enabled) and against a three-node JetStream
//! cluster (127.0.0.1:4241-4243, streams of three replicas, started by
//! `.ci/run` from `.ci/nats-cluster/`); on the cluster, a run also loses
//! its stream's leader midway.

mod support;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use outbox::publisher::{Envelope, NatsPublisher};
use outbox::{NewMessage, Relay};
use support::broker::{self, candidate, TestBroker};
use support::sqlite::{
    assert_dead_at_once, enqueue, migrated, migrated_with_payload_limit, pending,
    relay_until_drained, the_dead_letter,
};

/// Where a test publishes.
#[derive(Debug, Clone, Copy)]
struct Server {
    /// The servers' addresses; a client may connect to any.
    addrs: &'static [&'static str],
    /// Replicas of each test stream.
    replicas: usize,
    /// How to start it, for the message of a test that cannot reach it.
    start: &'static str,
}

const STANDALONE: Server = Server {
    addrs: &["127.0.0.1:4222"],
    replicas: 1,
    start: "start-stop-daemon --start --oknodo --background \
        --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
        -l /var/log/nats-server.log",
};

const CLUSTER: Server = Server {
    addrs: &["127.0.0.1:4241", "127.0.0.1:4242", "127.0.0.1:4243"],
    replicas: 3,
    start: "bash .ci/run (it starts the cluster from .ci/nats-cluster/n1.conf, n2.conf, n3.conf)",
};
const TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of the database files.
const DB: &str = "outbox-nats";

// ---------------------------------------------------------------------------
// NATS

async fn nats(server: Server) -> async_nats::Client {
    for addr in server.addrs {
        support::require_service("NATS", addr, server.start).await;
    }
    async_nats::connect(server.addrs)
        .await
        .expect("connect to NATS")
}

/// A stream of its own for one test, capturing `<prefix>>`; deleted when
/// dropped, also when the test fails.
struct TestStream {
    server: Server,
    client: async_nats::Client,
    js: jetstream::Context,
    name: String,
    prefix: String,
}

impl TestStream {
    async fn create(client: &async_nats::Client, server: Server) -> TestStream {
        Self::create_with(client, server, -1).await
    }

    /// A stream that refuses messages over `max_msg_size` bytes (-1: no
    /// limit of its own).
    async fn create_with(
        client: &async_nats::Client,
        server: Server,
        max_msg_size: i32,
    ) -> TestStream {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let name = format!("OUTBOX_TEST_{id}");
        let prefix = format!("outboxtest.{id}.");
        let js = jetstream::new(client.clone());
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}>")],
            duplicate_window: Duration::from_secs(120),
            num_replicas: server.replicas,
            max_message_size: max_msg_size,
            ..Default::default()
        })
        .await
        .expect("create stream");
        TestStream {
            server,
            client: client.clone(),
            js,
            name,
            prefix,
        }
    }

    /// Reads `n` messages through an ordered pull consumer: one that
    /// notices a gap in the stream sequences it receives (a message sent
    /// as a pull request expired, or by a consumer leader that was lost)
    /// and starts again after the last message it got, so each stored
    /// message is read once, in the stream's order. A gap at the very end
    /// has no later message to reveal it: a consumer that delivers nothing
    /// for `STALL` is replaced by one that starts after the last stream
    /// sequence received, and so is one that fails.
    async fn consume(&self, n: usize) -> Vec<async_nats::Message> {
        const STALL: Duration = Duration::from_secs(10);
        let s = self.js.get_stream(&self.name).await.expect("get stream");
        let mut out = Vec::new();
        let mut after = 0;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while out.len() < n {
            let config = consumer::pull::OrderedConfig {
                deliver_policy: if after == 0 {
                    consumer::DeliverPolicy::All
                } else {
                    consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    }
                },
                ..Default::default()
            };
            let now = tokio::time::Instant::now();
            assert!(now < deadline, "consumer got {} of {n} messages", out.len());
            // While the cluster elects a leader a consumer may not be
            // created yet, or may fail: another is made after `after`.
            let Ok(consumer) = s.create_consumer(config).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let Ok(mut messages) = consumer.messages().await else {
                continue;
            };
            while out.len() < n {
                let wait =
                    STALL.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                let Ok(Some(Ok(m))) = tokio::time::timeout(wait, messages.next()).await else {
                    break; // stalled or failed: a new consumer after `after`
                };
                after = m.info().expect("a stream message's info").stream_sequence;
                out.push(m.message);
            }
        }
        out
    }
}

#[async_trait]
impl TestBroker for TestStream {
    type Publisher = NatsPublisher;
    const NAME: &'static str = "NATS JetStream";

    fn publisher(&self) -> NatsPublisher {
        NatsPublisher::new(self.client.clone()).with_subject_prefix(&self.prefix)
    }

    /// Asks again while the stream has no leader to answer (a cluster
    /// electing one), for up to a minute.
    async fn count(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let asked = async {
                let mut s = self.js.get_stream(&self.name).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(s.info().await?.state.messages)
            };
            match asked.await {
                Ok(n) => return n,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "stream info: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn consume_ids(&self, n: usize) -> Vec<String> {
        self.consume(n)
            .await
            .iter()
            .map(|m| header(m, "Nats-Msg-Id").unwrap().to_owned())
            .collect()
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        let addrs = self.server.addrs;
        // A runtime of its own: drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(c) = async_nats::connect(addrs).await {
                    let _ = jetstream::new(c).delete_stream(&name).await;
                }
            });
        })
        .join();
    }
}

fn header<'a>(m: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str())
}

// ---------------------------------------------------------------------------
// Tests

async fn relay_publishes_to_jetstream_with_headers(server: Server) {
    let client = nats(server).await;
    let stream = TestStream::create(&client, server).await;
    let (_db, outbox, ids) = broker::with_candidates(DB, 0..5).await;

    let publisher = NatsPublisher::new(client.clone()).with_subject_prefix(&stream.prefix);
    relay_until_drained(&outbox, publisher, "the outbox to drain", TIMEOUT).await;

    let got = stream.consume(5).await;
    assert_eq!(stream.count().await, 5);
    for (n, m) in got.iter().enumerate() {
        let n = n as u32;
        assert_eq!(m.subject.as_str(), format!("{}candidates", stream.prefix));
        let payload: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(payload["candidate_id"], n);
        assert_eq!(
            header(m, "Nats-Msg-Id"),
            Some(ids[n as usize].to_string().as_str())
        );
        assert_eq!(
            header(m, "outbox-id"),
            Some(ids[n as usize].to_string().as_str())
        );
        assert_eq!(
            header(m, "outbox-event-type"),
            Some("CandidateStatusChanged")
        );
        assert_eq!(header(m, "outbox-schema-version"), Some("2"));
        assert_eq!(
            header(m, "outbox-partition-key"),
            Some(format!("candidate-{n}").as_str())
        );
        assert_eq!(header(m, "Content-Type"), Some("application/json"));
        assert_eq!(
            header(m, "traceparent"),
            Some(format!("00-trace-{n}-01").as_str())
        );
    }
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

async fn cloudevents_modes_over_jetstream(server: Server) {
    let client = nats(server).await;
    let stream = TestStream::create(&client, server).await;
    let (db, outbox) = migrated(DB).await;
    let binary = candidate("binary", 1);
    let structured = candidate("structured", 2);
    let (binary_id, structured_id) = (binary.id(), structured.id());

    // Binary mode: payload as is, attributes in ce-* headers. Structured
    // mode: a CloudEvents JSON document as the body.
    let source = "/recruiting/candidates".to_owned();
    for (message, envelope) in [
        (
            binary,
            Envelope::CloudEventsBinary {
                source: source.clone(),
            },
        ),
        (structured, Envelope::CloudEventsStructured { source }),
    ] {
        enqueue(&db, &outbox, vec![message]).await;
        let publisher = stream.publisher().with_envelope(envelope);
        relay_until_drained(&outbox, publisher, "the event", TIMEOUT).await;
    }

    let got = stream.consume(2).await;
    let b = &got[0];
    assert_eq!(b.subject.as_str(), format!("{}binary", stream.prefix));
    assert_eq!(header(b, "ce-specversion"), Some("1.0"));
    assert_eq!(header(b, "ce-id"), Some(binary_id.to_string().as_str()));
    assert_eq!(header(b, "ce-source"), Some("/recruiting/candidates"));
    assert_eq!(header(b, "ce-type"), Some("CandidateStatusChanged"));
    assert_eq!(header(b, "ce-subject"), Some("candidate-1"));
    assert_eq!(header(b, "ce-schemaversion"), Some("2"));
    assert!(header(b, "ce-time").is_some());
    assert_eq!(header(b, "Content-Type"), Some("application/json"));
    assert_eq!(
        header(b, "Nats-Msg-Id"),
        Some(binary_id.to_string().as_str())
    );
    assert_eq!(header(b, "traceparent"), Some("00-trace-1-01"));
    let payload: serde_json::Value = serde_json::from_slice(&b.payload).unwrap();
    assert_eq!(payload["candidate_id"], 1);

    let s = &got[1];
    assert_eq!(
        header(s, "Content-Type"),
        Some("application/cloudevents+json")
    );
    assert_eq!(
        header(s, "Nats-Msg-Id"),
        Some(structured_id.to_string().as_str())
    );
    let doc: serde_json::Value = serde_json::from_slice(&s.payload).unwrap();
    assert_eq!(doc["specversion"], "1.0");
    assert_eq!(doc["id"], structured_id.to_string());
    assert_eq!(doc["type"], "CandidateStatusChanged");
    assert_eq!(doc["subject"], "candidate-2");
    assert_eq!(doc["data"]["candidate_id"], 2);
}

/// JetStream drops a second copy within its duplicate window.
async fn a_message_sent_twice_is_stored_once(server: Server) {
    let stream = TestStream::create(&nats(server).await, server).await;
    broker::a_message_sent_twice_is_stored_once(&stream).await;
}

async fn nothing_is_lost_while_the_broker_is_unreachable(server: Server) {
    let stream = TestStream::create(&nats(server).await, server).await;
    let proxy = support::Proxy::start(server.addrs[0]).await;
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        // Only through the proxy, not to the cluster's other nodes.
        .ignore_discovered_servers()
        .connect(proxy.addr.to_string())
        .await
        .expect("connect through the proxy");
    let publisher = NatsPublisher::new(client.clone())
        .with_subject_prefix(&stream.prefix)
        .with_ack_timeout(Duration::from_secs(1));
    broker::nothing_is_lost_while_unreachable(&stream, &proxy, publisher, async || {
        support::eventually("the client to notice the outage", || {
            client.connection_state() != async_nats::connection::State::Connected
        })
        .await
    })
    .await;
}

async fn rejected_messages_are_dead_lettered(server: Server) {
    let client = nats(server).await;
    let stream = TestStream::create(&client, server).await;
    let (db, outbox) = migrated_with_payload_limit(DB, 4 << 20).await;
    let max_payload = client.server_info().max_payload;
    assert!(max_payload > 0);

    let too_big = NewMessage::bytes("candidates", vec![b'x'; max_payload + 1])
        .with_event_type("CandidateCvUploaded");
    let fine = candidate("candidates", 1);
    let (too_big_id, fine_id) = (too_big.id(), fine.id());
    enqueue(&db, &outbox, vec![too_big, fine]).await;

    let publisher = NatsPublisher::new(client.clone()).with_subject_prefix(&stream.prefix);
    relay_until_drained(&outbox, publisher, "the outbox to drain", TIMEOUT).await;

    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id(), too_big_id);
    assert_dead_at_once(&dead[0], "max_payload");
    let got = stream.consume(1).await;
    assert_eq!(
        header(&got[0], "Nats-Msg-Id"),
        Some(fine_id.to_string().as_str())
    );

    // A subject that no stream captures.
    let orphan = candidate(&format!("nostream{}", uuid::Uuid::now_v7().simple()), 2);
    let orphan_id = orphan.id();
    enqueue(&db, &outbox, vec![orphan]).await;
    let publisher = NatsPublisher::new(client.clone()).with_subject_prefix("outboxtest.orphans.");
    relay_until_drained(
        &outbox,
        publisher,
        "the orphan to be dead-lettered",
        TIMEOUT,
    )
    .await;
    let dead = outbox.dead_letters(10).await.unwrap();
    let orphan_dead = dead
        .iter()
        .find(|d| d.id() == orphan_id)
        .expect("the orphan is a dead letter");
    assert_dead_at_once(orphan_dead, "no JetStream stream captures subject");
    assert_eq!(stream.count().await, 1);

    // Headers NATS cannot carry, in rows written around the outbox's own
    // checks: a name with ':', a value with a line break.
    let (bad_name, bad_value) = (candidate("candidates", 3), candidate("candidates", 4));
    let (bad_name_id, bad_value_id) = (bad_name.id(), bad_value.id());
    enqueue(&db, &outbox, vec![bad_name, bad_value]).await;
    for (id, headers) in [
        (bad_name_id, r#"{"bad:name": "v"}"#),
        (bad_value_id, r#"{"x-split": "a\nInjected: yes"}"#),
    ] {
        let set = sqlx::query("UPDATE outbox_messages SET headers = ? WHERE id = ?")
            .bind(headers)
            .bind(id.as_uuid().as_bytes().to_vec())
            .execute(&db.pool)
            .await
            .unwrap();
        assert_eq!(set.rows_affected(), 1);
    }
    let publisher = NatsPublisher::new(client.clone()).with_subject_prefix(&stream.prefix);
    relay_until_drained(&outbox, publisher, "the bad headers to drain", TIMEOUT).await;
    let dead = outbox.dead_letters(10).await.unwrap();
    let of = |id| dead.iter().find(|d| d.id() == id).expect("a dead letter");
    assert_dead_at_once(of(bad_name_id), "cannot be sent over NATS");
    assert_dead_at_once(of(bad_value_id), "NATS cannot carry (CR or LF)");
    assert_eq!(stream.count().await, 1);
}

/// Runs of a key in one batch: stored in order, and nothing of the key
/// after its first failure. One key's 200 messages go out with a run of
/// another key whose second message the stream refuses (larger than the
/// stream's own limit, under the server's: it is sent, and the stream
/// answers with an error): the first key is stored whole and in order; of
/// the second, only the message before the failure.
async fn a_keys_run_is_stored_in_order_and_stops_at_its_first_failure(server: Server) {
    let client = nats(server).await;
    let stream = TestStream::create_with(&client, server, 4096).await;
    let (db, outbox) = migrated(DB).await;
    assert!(client.server_info().max_payload > 8192);
    let mut messages: Vec<NewMessage> = (0..200)
        .map(|n| support::keyed_candidate("candidates", n, "hot"))
        .collect();
    let failing = [
        support::keyed_candidate("candidates", 0, "failing"),
        NewMessage::bytes("candidates", vec![b'x'; 8192]).with_partition_key("failing"),
        support::keyed_candidate("candidates", 2, "failing"),
        support::keyed_candidate("candidates", 3, "failing"),
    ];
    let (first_failing, too_big) = (failing[0].id(), failing[1].id());
    messages.splice(100..100, failing);
    enqueue(&db, &outbox, messages).await;

    let publisher = NatsPublisher::new(client.clone()).with_subject_prefix(&stream.prefix);
    assert!(outbox::Publisher::keeps_key_order(&publisher));
    let relay = Relay::builder(outbox.clone(), publisher)
        .batch_size(1000)
        .spawn()
        .expect("relay");
    // The dead letter is acknowledged with the call that carried the whole
    // run: whatever that call stored is in the stream by then.
    let dead = the_dead_letter(&outbox, relay, TIMEOUT).await;
    assert_eq!(dead.id(), too_big);
    assert_eq!(dead.attempts, 1, "refused for good: {}", dead.last_error);
    assert_eq!(
        pending(&outbox).await,
        2,
        "the rest of the blocked key waits"
    );
    assert_eq!(stream.count().await, 201);
    let got = stream.consume(201).await;
    let keyed: Vec<(String, u64)> = got
        .iter()
        .map(|m| {
            let doc: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            (
                doc["candidate"].as_str().unwrap().to_owned(),
                doc["n"].as_u64().unwrap(),
            )
        })
        .collect();
    let hot: Vec<u64> = keyed
        .iter()
        .filter(|(k, _)| k == "hot")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(hot, (0..200).collect::<Vec<u64>>(), "the hot key in order");
    let failing: Vec<&str> = got
        .iter()
        .filter(|m| header(m, "outbox-partition-key") == Some("failing"))
        .map(|m| header(m, "Nats-Msg-Id").unwrap())
        .collect();
    assert_eq!(failing, [first_failing.to_string().as_str()]);
}

async fn drains_a_large_backlog(server: Server) {
    let stream = TestStream::create(&nats(server).await, server).await;
    broker::drains_a_large_backlog(&stream).await;
}

/// Held shared by the tests on the cluster, alone by the one that kills a
/// node: the other tests of this binary run beside each other, not beside
/// a lost node.
static NODES_UP: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Messages of the leader-loss run: `OUTBOX_NATS_CLUSTER_MESSAGES`, or
/// 20,000 (the issue's 100,000 take a few minutes here:
/// `OUTBOX_NATS_CLUSTER_MESSAGES=100000 cargo test --all-features --test
/// publisher_nats leader`).
fn leader_loss_messages() -> usize {
    std::env::var("OUTBOX_NATS_CLUSTER_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Kills the cluster node named `name` (SIGKILL, by its pid file) and
/// starts it again from its configuration a moment later.
async fn kill_and_restart(name: &str) {
    let node = name.trim_start_matches("outbox-");
    let pid = std::fs::read_to_string(format!("/tmp/outbox-nats-cluster/{node}.pid"))
        .unwrap_or_else(|e| panic!("the pid file of {name}: {e}"));
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill {name}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let conf = format!(
        "{}/.ci/nats-cluster/{node}.conf",
        env!("CARGO_MANIFEST_DIR")
    );
    // A session of its own that outlives the test, as `.ci/run` starts it.
    let restarted = std::process::Command::new("setsid")
        .args(["-f", "/usr/sbin/nats-server", "-c", &conf])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("restart the node");
    assert!(restarted.success(), "restart {name}");
}

/// A run through the cluster during which the stream's leader is killed
/// and restarted: every message is stored exactly once (the relay sends
/// again what the lost leader had not confirmed, and the next leader drops
/// the copies by `Nats-Msg-Id`), per key in order, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_loses_its_stream_leader_and_keeps_each_message_once_in_order() {
    let _alone = NODES_UP.write().await;
    let server = CLUSTER;
    let client = nats(server).await;
    let stream = TestStream::create(&client, server).await;
    let (db, outbox) = migrated(DB).await;
    let n = leader_loss_messages();
    let keys = 200;
    let mut sent = std::collections::HashMap::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let messages: Vec<NewMessage> = chunk
            .iter()
            .map(|i| {
                NewMessage::json(
                    "orders",
                    &serde_json::json!({ "key": i % keys, "n": i / keys }),
                )
                .unwrap()
                .with_partition_key(format!("order-{}", i % keys))
            })
            .collect();
        for m in &messages {
            sent.insert(m.id().to_string(), ());
        }
        enqueue(&db, &outbox, messages).await;
    }
    let relay = outbox::Relay::builder(
        outbox.clone(),
        stream.publisher().with_ack_timeout(Duration::from_secs(2)),
    )
    .batch_size(500)
    // Retried through the election for as long as it takes: none may be
    // dead-lettered (and block its key) because the cluster was busy.
    .retry(
        outbox::RetryPolicy::new()
            .initial_delay(Duration::from_millis(50))
            .max_delay(Duration::from_secs(1))
            .max_attempts(10_000),
    )
    .spawn()
    .unwrap();

    support::wait_for("a third of the run stored", TIMEOUT, || async {
        stream.count().await >= (n / 3) as u64
    })
    .await;
    let leader = {
        let mut s = stream
            .js
            .get_stream(&stream.name)
            .await
            .expect("get stream");
        let info = s.info().await.expect("stream info");
        info.cluster
            .clone()
            .and_then(|c| c.leader)
            .expect("a replicated stream has a leader")
    };
    let stored_at_kill = stream.count().await;
    assert!(
        stored_at_kill < n as u64,
        "the run ended before the leader was lost: nothing was tested"
    );
    kill_and_restart(&leader).await;
    support::wait_for("the outbox drained", Duration::from_secs(600), || async {
        outbox.pending_count().await.unwrap() == 0
    })
    .await;
    relay.shutdown().await.unwrap();
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    assert!(outbox.blocked_keys().await.unwrap().is_empty());

    assert_eq!(stream.count().await, n as u64, "each message stored once");
    let got = stream.consume(n).await;
    let mut seen = std::collections::HashSet::new();
    let mut last: std::collections::HashMap<u64, i64> = std::collections::HashMap::new();
    for m in &got {
        let id = header(m, "Nats-Msg-Id").expect("an id").to_owned();
        assert!(sent.contains_key(&id), "{id} was never sent");
        assert!(seen.insert(id.clone()), "{id} stored twice");
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let (key, ordinal) = (body["key"].as_u64().unwrap(), body["n"].as_i64().unwrap());
        let before = last.insert(key, ordinal).unwrap_or(-1);
        assert!(
            before < ordinal,
            "key {key}: {ordinal} stored after {before}"
        );
    }
    assert_eq!(seen.len(), n, "nothing lost");
    // The node is back for the tests that follow.
    support::wait_for("the restarted node to listen", TIMEOUT, || async {
        let mut up = true;
        for addr in server.addrs {
            up &= tokio::net::TcpStream::connect(addr).await.is_ok();
        }
        up
    })
    .await;
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
    relay_publishes_to_jetstream_with_headers,
    cloudevents_modes_over_jetstream,
    a_message_sent_twice_is_stored_once,
    nothing_is_lost_while_the_broker_is_unreachable,
    rejected_messages_are_dead_lettered,
    a_keys_run_is_stored_in_order_and_stops_at_its_first_failure,
    drains_a_large_backlog
);
