//! Trace context from the request that enqueues a message to a consumer
//! reading it from NATS JetStream (127.0.0.1:4222): one trace id end to
//! end, an `outbox.publish` producer span per attempt whose parent is the
//! request's span (retries side by side, never nested), and the context
//! of the attempt that went through in the message's NATS headers. With
//! `TraceLink::Link`, the publish span starts a trace of its own linked to
//! the request's.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use outbox::publisher::NatsPublisher;
use outbox::{NewMessage, OutboxMessage, PublishError, Publisher, Relay, TraceLink};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::prelude::*;

const NATS: &str = "127.0.0.1:4222";
const START_NATS: &str = "start-stop-daemon --start --oknodo --background \
    --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
    -l /var/log/nats-server.log";

/// A publisher whose first call fails every message, then NATS.
struct FailsFirst {
    calls: AtomicUsize,
    nats: NatsPublisher,
}

#[async_trait]
impl Publisher for FailsFirst {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return batch
                .iter()
                .map(|_| Err(PublishError::transient("broker busy")))
                .collect();
        }
        self.nats.publish(batch).await
    }
}

/// The trace and span ids of a `traceparent` header.
fn parse(traceparent: &str) -> (TraceId, SpanId) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (
        TraceId::from_hex(parts[1]).unwrap(),
        SpanId::from_hex(parts[2]).unwrap(),
    )
}

/// Enqueues one message inside a request span, relays it through a
/// publisher that fails once, and returns the request's ids, the
/// `traceparent` the consumer read, and the spans exported.
async fn run(
    exporter: &InMemorySpanExporter,
    provider: &SdkTracerProvider,
    link: TraceLink,
) -> ((TraceId, SpanId), String, Vec<SpanData>) {
    exporter.reset();
    support::require_service("NATS", NATS, START_NATS).await;
    let client = async_nats::connect(NATS).await.expect("connect to NATS");
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (name, prefix) = (format!("OUTBOX_TRACE_{id}"), format!("outboxtrace.{id}."));
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}>")],
        ..Default::default()
    })
    .await
    .expect("create stream");

    let (db, outbox) = support::sqlite::migrated("outbox-trace").await;
    let request = tracing::info_span!("http.request");
    let ids = {
        let cx = request.context();
        let sc = cx.span().span_context().clone();
        (sc.trace_id(), sc.span_id())
    };
    async {
        let mut tx = db.pool.begin().await.unwrap();
        let m = NewMessage::json("orders", &serde_json::json!({"n": 1}))
            .unwrap()
            .with_partition_key("a");
        outbox.enqueue(&mut *tx, m).await.unwrap();
        tx.commit().await.unwrap();
    }
    .instrument(request)
    .await;

    let publisher = FailsFirst {
        calls: AtomicUsize::new(0),
        nats: NatsPublisher::new(client.clone()).with_subject_prefix(prefix.clone()),
    };
    let relay = Relay::builder(outbox.clone(), publisher)
        .retry(support::fast_retry())
        .poll_interval(Duration::from_millis(50))
        .trace_link(link)
        .spawn()
        .unwrap();
    support::sqlite::drained(&outbox, "the message published", Duration::from_secs(30)).await;
    relay.shutdown().await.unwrap();

    let stream = js.get_stream(&name).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(1).messages().await.unwrap();
    let m = messages.next().await.expect("one message").unwrap();
    let traceparent = m
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .expect("a traceparent header")
        .to_string();
    js.delete_stream(&name).await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    (ids, traceparent, spans)
}

/// The spans of the two publish attempts among `spans`.
fn the_two_publishes(spans: &[SpanData]) -> Vec<&SpanData> {
    let publishes: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "publish orders")
        .collect();
    assert_eq!(publishes.len(), 2, "two attempts: {spans:#?}");
    publishes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_the_request_to_the_consumer() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("outbox-test")))
        .init();

    // Parent: one trace, the attempts side by side under the request.
    let ((trace, request), traceparent, spans) = run(&exporter, &provider, TraceLink::Parent).await;
    let publishes = the_two_publishes(&spans);
    for s in &publishes {
        assert_eq!(s.span_context.trace_id(), trace);
        assert_eq!(s.parent_span_id, request, "every attempt under the request");
        assert_eq!(s.span_kind, opentelemetry::trace::SpanKind::Producer);
    }
    let (consumer_trace, consumer_parent) = parse(&traceparent);
    assert_eq!(
        consumer_trace, trace,
        "the consumer continues the request's trace"
    );
    let last = publishes
        .iter()
        .find(|s| s.span_context.span_id() == consumer_parent)
        .expect("the consumer's parent is a publish span");
    assert_eq!(last.status, opentelemetry::trace::Status::Ok);
    assert!(
        publishes
            .iter()
            .any(|s| matches!(s.status, opentelemetry::trace::Status::Error { .. })),
        "the failed attempt says so"
    );

    // Link: a trace of its own per attempt, linked to the request.
    let ((trace, request), traceparent, spans) = run(&exporter, &provider, TraceLink::Link).await;
    let publishes = the_two_publishes(&spans);
    for s in &publishes {
        assert_ne!(s.span_context.trace_id(), trace);
        assert!(
            s.links
                .iter()
                .any(|l| l.span_context.trace_id() == trace && l.span_context.span_id() == request),
            "linked to the request: {s:#?}"
        );
    }
    let (consumer_trace, _) = parse(&traceparent);
    assert!(publishes
        .iter()
        .any(|s| s.span_context.trace_id() == consumer_trace));
}
