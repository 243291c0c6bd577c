//! The webhook publisher against a real local HTTP server (axum on
//! 127.0.0.1), driven by a relay on a fresh SQLite outbox.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use outbox::publisher::{
    signature_header, verify_signature, Envelope, WebhookPublisher, CLOUDEVENTS_JSON,
};
use outbox::{MessageId, NewMessage, RelayHandle, SqliteOutbox};
use support::sqlite::{
    drained, enqueue, enqueue_until_transient_failures, migrated, pending, relay, the_dead_letter,
};
use support::{fast_retry, wait_for};

const TIMEOUT: Duration = Duration::from_secs(20);
/// The prefix of the database files.
const DB: &str = "outbox-http";
const SECRET: &[u8] = b"test-secret-0123456789abcdef0123";
const TOLERANCE: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------- database

fn candidate(n: u32, key: &str) -> NewMessage {
    support::keyed_candidate("recruiting.candidates", n, key)
}

// ------------------------------------------------------------------ server

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("header {name} missing: {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    fn id(&self) -> MessageId {
        self.header("idempotency-key").parse().unwrap()
    }
}

/// What to answer to the `nth` (1-based) request carrying one idempotency
/// key: status, extra headers, body.
type Script = dyn Fn(usize) -> (StatusCode, Vec<(&'static str, String)>, String) + Send + Sync;

#[derive(Clone)]
struct ServerState {
    seen: Arc<Mutex<Vec<Seen>>>,
    per_id: Arc<Mutex<HashMap<String, usize>>>,
    script: Arc<Script>,
    delay: Duration,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

/// A local webhook receiver recording every request.
struct Server {
    addr: SocketAddr,
    state: ServerState,
}

impl Server {
    async fn start(
        script: impl Fn(usize) -> (StatusCode, Vec<(&'static str, String)>, String)
            + Send
            + Sync
            + 'static,
    ) -> Server {
        Self::start_with_delay(script, Duration::ZERO).await
    }

    async fn start_with_delay(
        script: impl Fn(usize) -> (StatusCode, Vec<(&'static str, String)>, String)
            + Send
            + Sync
            + 'static,
        delay: Duration,
    ) -> Server {
        let state = ServerState {
            seen: Arc::default(),
            per_id: Arc::default(),
            script: Arc::new(script),
            delay,
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        };
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A publisher posting every message to `/in`, unsigned.
    fn publisher(&self) -> WebhookPublisher {
        WebhookPublisher::builder(self.url("/in")).build().unwrap()
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// A server that answers its first request with `status`, `headers`
    /// and `body`, and every later one with 200.
    async fn failing_first(
        status: StatusCode,
        headers: Vec<(&'static str, String)>,
        body: &'static str,
    ) -> Server {
        Self::start(move |nth| {
            if nth == 1 {
                (status, headers.clone(), body.to_owned())
            } else {
                Server::ok()
            }
        })
        .await
    }

    /// Waits until this server has seen `n` requests and the outbox is
    /// empty, stops `relay` and returns what the server saw.
    async fn seen_once_drained(
        &self,
        outbox: &SqliteOutbox,
        relay: RelayHandle,
        n: usize,
    ) -> Vec<Seen> {
        wait_for(&format!("{n} requests"), TIMEOUT, || async {
            self.seen().len() >= n && pending(outbox).await == 0
        })
        .await;
        relay.shutdown().await.unwrap();
        self.seen()
    }

    fn ok() -> (StatusCode, Vec<(&'static str, String)>, String) {
        (StatusCode::OK, vec![], String::new())
    }
}

async fn handle(
    State(s): State<ServerState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let seen = Seen {
        at: Instant::now(),
        method,
        path: uri.path().to_owned(),
        headers,
        body,
    };
    let key = seen
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let nth = {
        let mut per_id = s.per_id.lock().unwrap();
        let n = per_id.entry(key).or_insert(0);
        *n += 1;
        *n
    };
    s.seen.lock().unwrap().push(seen);
    if !s.delay.is_zero() {
        tokio::time::sleep(s.delay).await;
    }
    let (status, extra, body) = (s.script)(nth);
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut response = (status, body).into_response();
    for (k, v) in extra {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    response
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_messages_arrive_signed_with_idempotency_key_and_metadata() {
    let (db, outbox) = migrated(DB).await;
    let server = Server::start(|_| Server::ok()).await;
    let publisher = WebhookPublisher::builder(server.url("/hooks/outbox"))
        .topic_url("recruiting.offers", server.url("/hooks/offers"))
        .signing_secret(SECRET)
        .build()
        .unwrap();
    let shown = format!("{publisher:?}");
    assert!(
        !shown.contains(std::str::from_utf8(SECRET).unwrap()),
        "secret in Debug: {shown}"
    );

    let messages = vec![
        candidate(1, "candidate-1").with_header("traceparent", "00-abc-def-01"),
        candidate(2, "candidate-2"),
        NewMessage::json("recruiting.offers", &serde_json::json!({"offer": 7}))
            .unwrap()
            .with_partition_key("candidate-1"),
    ];
    let expected: Vec<(MessageId, Vec<u8>)> = messages
        .iter()
        .map(|m| (m.id(), m.payload().to_vec()))
        .collect();
    enqueue(&db, &outbox, messages).await;
    let relay = relay(&outbox, publisher, fast_retry());
    let seen = server.seen_once_drained(&outbox, relay, 3).await;
    assert_eq!(seen.len(), 3, "each message once: {seen:?}");
    let by_id: HashMap<MessageId, &Seen> = seen.iter().map(|s| (s.id(), s)).collect();
    for (i, (id, payload)) in expected.iter().enumerate() {
        let s = by_id[id];
        assert_eq!(s.method, Method::POST);
        assert_eq!(&s.body[..], &payload[..], "body is the payload as enqueued");
        assert_eq!(s.header("content-type"), "application/json");
        assert_eq!(s.header("outbox-id"), id.to_string());
        assert!(s.header("user-agent").starts_with("outbox/"));
        let created = s.header("outbox-created-at");
        chrono::DateTime::parse_from_rfc3339(created).expect("RFC 3339 created-at");
        s.header("outbox-position").parse::<i64>().unwrap();
        if i < 2 {
            assert_eq!(s.path, "/hooks/outbox");
            assert_eq!(s.header("outbox-event-type"), "CandidateStatusChanged");
            assert_eq!(s.header("outbox-schema-version"), "2");
            assert_eq!(
                s.header("outbox-partition-key"),
                format!("candidate-{}", i + 1)
            );
        } else {
            assert_eq!(s.path, "/hooks/offers", "per-topic URL");
            assert_eq!(s.header("outbox-event-type"), "recruiting.offers");
        }

        // The receiver's side of the signature.
        let sig = s.header("outbox-signature");
        assert!(sig.starts_with("t=") && sig.contains(",v1="), "{sig}");
        let now = SystemTime::now();
        assert!(verify_signature(SECRET, sig, &s.body, now, TOLERANCE));
        assert!(!verify_signature(
            b"wrong secret",
            sig,
            &s.body,
            now,
            TOLERANCE
        ));
        let mut tampered = s.body.to_vec();
        tampered.push(b' ');
        assert!(!verify_signature(SECRET, sig, &tampered, now, TOLERANCE));
        let much_later = now + Duration::from_secs(600);
        assert!(
            !verify_signature(SECRET, sig, &s.body, much_later, TOLERANCE),
            "a stale timestamp is refused"
        );
    }
    assert_eq!(by_id[&expected[0].0].header("traceparent"), "00-abc-def-01");

    // A header signed by anyone else's code the same way verifies too.
    let t = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let h = signature_header(SECRET, t, b"{}");
    assert!(verify_signature(
        SECRET,
        &h,
        b"{}",
        SystemTime::now(),
        TOLERANCE
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_is_retried_then_delivered() {
    let (db, outbox) = migrated(DB).await;
    let server = Server::failing_first(
        StatusCode::INTERNAL_SERVER_ERROR,
        vec![],
        "database is down",
    )
    .await;
    let publisher = server.publisher();
    let first = candidate(1, "candidate-1");
    let second = candidate(2, "candidate-1");
    let ids = [first.id(), second.id()];
    enqueue(&db, &outbox, vec![first, second]).await;
    let relay = relay(&outbox, publisher, fast_retry());
    drained(&outbox, "both delivered", TIMEOUT).await;
    relay.shutdown().await.unwrap();

    let got: Vec<MessageId> = server.seen().iter().map(Seen::id).collect();
    assert_eq!(
        got,
        vec![ids[0], ids[0], ids[1], ids[1]],
        "each message fails once and is retried with the same idempotency key; \
         the second waits for the first (key order)"
    );
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_dead_letters_with_status_and_excerpt() {
    let (db, outbox) = migrated(DB).await;
    let long_tail = "x".repeat(5000);
    let server = Server::start(move |_| {
        (
            StatusCode::BAD_REQUEST,
            vec![],
            format!("invalid payload: field `candidate` missing {long_tail}"),
        )
    })
    .await;
    let publisher = server.publisher();
    let m = candidate(1, "candidate-1");
    let id = m.id();
    enqueue(&db, &outbox, vec![m]).await;
    let relay = relay(&outbox, publisher, fast_retry());
    let dead = the_dead_letter(&outbox, relay, TIMEOUT).await;
    assert_eq!(dead.id(), id);
    assert_eq!(dead.attempts, 1, "no retry of a 400");
    let e = &dead.last_error;
    assert!(e.contains("permanent publish failure"), "{e}");
    assert!(e.contains("400 Bad Request"), "{e}");
    assert!(
        e.contains("invalid payload: field `candidate` missing"),
        "{e}"
    );
    assert!(
        e.len() < 600,
        "the body excerpt is truncated: {} bytes",
        e.len()
    );
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_waits_for_retry_after() {
    let (db, outbox) = migrated(DB).await;
    let server = Server::failing_first(
        StatusCode::TOO_MANY_REQUESTS,
        vec![("retry-after", "1".to_owned())],
        "slow down",
    )
    .await;
    let publisher = server.publisher();
    let m = candidate(1, "candidate-1");
    enqueue(&db, &outbox, vec![m]).await;
    // The relay's own backoff is at most 200 ms: only Retry-After explains a
    // longer wait.
    let relay = relay(&outbox, publisher, fast_retry());
    let seen = server.seen_once_drained(&outbox, relay, 2).await;
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "the second attempt came {gap:?} after the first, before Retry-After: 1 ran out"
    );
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_then_back_loses_nothing() {
    let (db, outbox) = migrated(DB).await;
    let server = Server::start(|_| Server::ok()).await;
    let proxy = support::Proxy::start(&server.addr.to_string()).await;
    let publisher = WebhookPublisher::builder(format!("{}/in", proxy.url("http")))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let relay = relay(&outbox, publisher, fast_retry().max_attempts(10_000));

    // Warm up: one delivery through the proxy, so a pooled connection exists
    // and is cut too.
    enqueue(&db, &outbox, vec![candidate(0, "warm-up")]).await;
    wait_for("the warm-up delivery", TIMEOUT, || async {
        server.seen().len() == 1
    })
    .await;

    proxy.cut();
    let messages: Vec<NewMessage> = (1..=9)
        .map(|n| candidate(n, &format!("candidate-{}", n % 3)))
        .collect();
    let ids: Vec<MessageId> = messages.iter().map(NewMessage::id).collect();
    // Failed attempts are recorded as transient, and nothing is dead.
    enqueue_until_transient_failures(&db, &outbox, messages, 3, TIMEOUT).await;
    assert_eq!(server.seen().len(), 1, "nothing got through the cut");

    proxy.restore();
    drained(&outbox, "all nine delivered", TIMEOUT).await;
    relay.shutdown().await.unwrap();

    let seen = server.seen();
    let got: HashSet<MessageId> = seen.iter().map(Seen::id).collect();
    for id in &ids {
        assert!(got.contains(id), "message {id} lost");
    }
    // Per key, first arrivals are in commit order.
    let order: Vec<MessageId> = seen.iter().map(Seen::id).collect();
    for k in 0..3usize {
        let key_ids: Vec<MessageId> = ids.iter().copied().skip(k).step_by(3).collect();
        let pos: Vec<usize> = key_ids
            .iter()
            .map(|id| order.iter().position(|x| x == id).unwrap())
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "key {k}: {pos:?}");
    }
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

/// Relays `m` to a server that accepts everything, through a webhook
/// publisher in the CloudEvents envelope that `envelope` makes of the source
/// `/recruiting/candidates`, signing with `secret` if one is given; returns
/// the one request the server saw.
async fn relay_cloudevent(
    envelope: fn(String) -> Envelope,
    secret: Option<&[u8]>,
    m: NewMessage,
) -> Seen {
    let (db, outbox) = migrated(DB).await;
    let server = Server::start(|_| Server::ok()).await;
    let mut builder = WebhookPublisher::builder(server.url("/events"))
        .envelope(envelope("/recruiting/candidates".into()));
    if let Some(secret) = secret {
        builder = builder.signing_secret(secret);
    }
    let publisher = builder.build().unwrap();
    enqueue(&db, &outbox, vec![m]).await;
    let relay = relay(&outbox, publisher, fast_retry());
    let mut seen = server.seen_once_drained(&outbox, relay, 1).await;
    seen.swap_remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_cloudevents_body_is_a_valid_cloudevent() {
    let m = candidate(7, "candidate-7").with_header("traceparent", "00-1-2-01");
    let (id, payload) = (m.id(), m.payload().to_vec());
    let s = &relay_cloudevent(
        |source| Envelope::CloudEventsStructured { source },
        Some(SECRET),
        m,
    )
    .await;
    assert_eq!(s.header("content-type"), CLOUDEVENTS_JSON);
    assert_eq!(s.id(), id);
    assert_eq!(s.header("traceparent"), "00-1-2-01");
    assert!(verify_signature(
        SECRET,
        s.header("outbox-signature"),
        &s.body,
        SystemTime::now(),
        TOLERANCE
    ));
    let doc: serde_json::Value = serde_json::from_slice(&s.body).expect("JSON body");
    // Required context attributes (CloudEvents 1.0 §3.1), non-empty strings.
    for attr in ["specversion", "id", "source", "type"] {
        assert!(
            doc[attr].as_str().is_some_and(|v| !v.is_empty()),
            "{attr} missing: {doc}"
        );
    }
    assert_eq!(doc["specversion"], "1.0");
    assert_eq!(doc["id"], id.to_string());
    assert_eq!(doc["source"], "/recruiting/candidates");
    assert_eq!(doc["type"], "CandidateStatusChanged");
    assert_eq!(doc["subject"], "candidate-7");
    assert_eq!(doc["datacontenttype"], "application/json");
    chrono::DateTime::parse_from_rfc3339(doc["time"].as_str().unwrap()).expect("RFC 3339 time");
    let data: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(doc["data"], data);
    assert!(doc.get("data_base64").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_cloudevents_attributes_travel_as_headers() {
    let m = candidate(8, "candidate 8 é");
    let (id, payload) = (m.id(), m.payload().to_vec());
    let s = &relay_cloudevent(|source| Envelope::CloudEventsBinary { source }, None, m).await;
    assert_eq!(&s.body[..], &payload[..]);
    assert_eq!(s.header("content-type"), "application/json");
    assert_eq!(s.header("ce-specversion"), "1.0");
    assert_eq!(s.header("ce-id"), id.to_string());
    assert_eq!(s.header("idempotency-key"), id.to_string());
    assert_eq!(s.header("ce-source"), "/recruiting/candidates");
    assert_eq!(s.header("ce-type"), "CandidateStatusChanged");
    assert_eq!(
        s.header("ce-subject"),
        "candidate%208%20%C3%A9",
        "percent-encoded"
    );
    assert_eq!(s.header("ce-schemaversion"), "2");
    assert!(s.headers.get("ce-datacontenttype").is_none());
    assert!(
        s.headers.get("outbox-signature").is_none(),
        "no secret, no signature"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_requests_run_in_parallel_up_to_the_limit() {
    let (db, outbox) = migrated(DB).await;
    let server = Server::start_with_delay(|_| Server::ok(), Duration::from_millis(200)).await;
    let publisher = WebhookPublisher::builder(server.url("/in"))
        .concurrency(3)
        .build()
        .unwrap();
    // Nine keys: one wave of nine messages.
    let messages: Vec<NewMessage> = (0..9).map(|n| candidate(n, &format!("c-{n}"))).collect();
    enqueue(&db, &outbox, messages).await;
    let relay = relay(&outbox, publisher, fast_retry());
    drained(&outbox, "nine deliveries", TIMEOUT).await;
    relay.shutdown().await.unwrap();
    assert_eq!(server.seen().len(), 9);
    let max = server.state.max_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&max),
        "requests in flight at once: {max} (limit 3)"
    );
}

#[test]
fn invalid_configuration_is_rejected() {
    for (builder, field) in [
        (WebhookPublisher::builder("not a url"), "url"),
        (WebhookPublisher::builder("ftp://example.com/"), "url"),
        (
            WebhookPublisher::builder("http://example.com/").topic_url("t", "::"),
            "topic_url",
        ),
        (
            WebhookPublisher::builder("http://example.com/").concurrency(0),
            "concurrency",
        ),
        (
            WebhookPublisher::builder("http://example.com/").timeout(Duration::ZERO),
            "timeout",
        ),
    ] {
        match builder.build() {
            Err(outbox::Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected InvalidConfig for {field}, got {other:?}"),
        }
    }
}
