//! Trace context carried from the request that enqueued a message to the
//! broker (feature `opentelemetry`).
//!
//! - At enqueue, the current `tracing` span's OpenTelemetry context is
//!   written into the message's headers as W3C `traceparent`, `tracestate`
//!   and `baggage` (unless the caller set a `traceparent` of its own).
//! - At publish, the relay opens a producer span `outbox.publish` per
//!   message, following the OpenTelemetry messaging conventions, whose
//!   parent is the stored context ([`TraceLink::Parent`]) or which links to
//!   it ([`TraceLink::Link`]); the span's own context replaces the stored
//!   one in the headers the publisher sends, so every built-in publisher
//!   carries it to the destination (NATS and AMQP headers, Kafka headers,
//!   HTTP headers, the Redis Streams headers field). Each attempt gets a
//!   span of its own, beside the earlier ones: the stored context never
//!   changes, so retries do not nest.
//!
//! Without the feature these calls do nothing.

#[cfg(feature = "opentelemetry")]
use crate::message::Headers;
use crate::message::{NewMessage, OutboxMessage};

/// How a publish span relates to the trace stored with its message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceLink {
    /// The stored context is the span's parent: one trace from the request
    /// to the consumer.
    #[default]
    Parent,
    /// The span starts a trace of its own with a link to the stored one:
    /// a publish hours later (retries, a backlog) does not stretch the
    /// request's trace.
    Link,
}

impl NewMessage {
    /// The message with the current span's trace context in its headers
    /// (feature `opentelemetry`; otherwise unchanged).
    pub(crate) fn traced(self) -> Self {
        #[cfg(feature = "opentelemetry")]
        {
            let mut m = self;
            otel::capture(&mut m.headers);
            m
        }
        #[cfg(not(feature = "opentelemetry"))]
        {
            self
        }
    }
}

/// The publish spans of one publisher call, open until its results are in.
#[derive(Debug, Default)]
pub(crate) struct PublishSpans {
    #[cfg(feature = "opentelemetry")]
    spans: Vec<tracing::Span>,
}

impl PublishSpans {
    /// Opens a span per message of `batch` and puts its context in the
    /// message's headers, for the publisher to send.
    #[cfg_attr(not(feature = "opentelemetry"), allow(unused_variables))]
    pub(crate) fn open(batch: &mut [OutboxMessage], link: TraceLink) -> Self {
        #[cfg(feature = "opentelemetry")]
        {
            PublishSpans {
                spans: batch.iter_mut().map(|m| otel::open(m, link)).collect(),
            }
        }
        #[cfg(not(feature = "opentelemetry"))]
        {
            PublishSpans {}
        }
    }

    /// Closes the spans with the call's results (one per message), or as
    /// abandoned without them.
    #[cfg_attr(not(feature = "opentelemetry"), allow(unused_variables))]
    pub(crate) fn close(self, results: Option<&[Result<(), crate::PublishError>]>) {
        #[cfg(feature = "opentelemetry")]
        for (i, span) in self.spans.into_iter().enumerate() {
            match results.and_then(|r| r.get(i)) {
                Some(Ok(())) => {
                    span.record("otel.status_code", "OK");
                }
                Some(Err(e)) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", e.to_string());
                }
                None => {
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", "abandoned");
                }
            }
        }
    }
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::propagation::{
        Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
    };
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{Headers, OutboxMessage, TraceLink};

    /// The headers a context travels in.
    const FIELDS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

    /// W3C trace context and baggage, built once.
    fn propagator() -> &'static TextMapCompositePropagator {
        static PROPAGATOR: std::sync::OnceLock<TextMapCompositePropagator> =
            std::sync::OnceLock::new();
        PROPAGATOR.get_or_init(|| {
            TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ])
        })
    }

    /// Headers as the propagators read and write them; empty values are
    /// not written.
    struct Carrier<'a>(&'a mut Headers);

    impl Injector for Carrier<'_> {
        fn set(&mut self, key: &str, value: String) {
            if !value.is_empty() {
                self.0.insert(key.to_owned(), value);
            }
        }
    }

    impl Extractor for Carrier<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(String::as_str)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }

    /// Writes the current span's context into `headers`, unless they hold
    /// a context already or no span is being recorded.
    pub(super) fn capture(headers: &mut Headers) {
        if headers.contains_key("traceparent") {
            return;
        }
        let cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            return;
        }
        propagator().inject_context(&cx, &mut Carrier(headers));
    }

    /// Opens the producer span of one message and puts its context in the
    /// message's headers in place of the stored one.
    pub(super) fn open(m: &mut OutboxMessage, link: TraceLink) -> tracing::Span {
        let span = tracing::info_span!(
            "outbox.publish",
            otel.name = %format!("publish {}", m.topic),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.destination.name = %m.topic,
            messaging.message.id = %m.id,
            outbox.position = m.seq,
            outbox.attempt = m.attempt,
        );
        if span.is_disabled() {
            // No subscriber records it: its context would be empty, and
            // the stored one travels on untouched.
            return span;
        }
        let stored = propagator().extract(&Carrier(&mut m.headers));
        if stored.span().span_context().is_valid() {
            match link {
                TraceLink::Parent => {
                    let _ = span.set_parent(stored);
                }
                TraceLink::Link => {
                    span.add_link(stored.span().span_context().clone());
                }
            }
        }
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            for f in FIELDS {
                m.headers.remove(f);
            }
            propagator().inject_context(&cx, &mut Carrier(&mut m.headers));
        }
        span
    }
}

#[cfg(all(test, feature = "opentelemetry"))]
mod tests {
    use super::*;
    use crate::message::MessageId;

    #[test]
    fn without_a_subscriber_the_stored_context_travels_untouched() {
        let stored = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut batch = vec![OutboxMessage {
            seq: 1,
            id: MessageId::new(),
            topic: "orders".into(),
            partition_key: None,
            event_type: "OrderPaid".into(),
            schema_version: 1,
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            headers: [
                ("traceparent".to_owned(), stored.to_owned()),
                ("tracestate".to_owned(), "vendor=1".to_owned()),
            ]
            .into(),
            created_at: chrono::Utc::now(),
            attempt: 1,
            key_sequence: None,
        }];
        let before = batch[0].headers.clone();
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            for link in [TraceLink::Parent, TraceLink::Link] {
                let spans = PublishSpans::open(&mut batch, link);
                assert!(spans.spans.iter().all(tracing::Span::is_disabled));
                spans.close(None);
                assert_eq!(batch[0].headers, before);
            }
        });
    }
}
