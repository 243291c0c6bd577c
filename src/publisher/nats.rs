//! A publisher for NATS JetStream (feature `nats`): [`NatsPublisher`],
//! whose documentation holds the mapping table and the error classification.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::context::{
    GetStreamByNameErrorKind, PublishAckFuture, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{HeaderMap, HeaderName, HeaderValue, Subject};
use async_trait::async_trait;
use tokio::time::Instant;

use super::envelope::{CePrefix, HeaderName as EnvelopeName};
use super::failure::{outcomes_or_retry, permanent, transient, Failure};
use super::hidden::Hidden;
use super::{Envelope, FailedKeys, Publisher};
use crate::error::PublishError;
use crate::message::OutboxMessage;

type NatsPublishError = jetstream::context::PublishError;

/// The body's content type.
const CONTENT_TYPE: HeaderName = HeaderName::from_static("Content-Type");

/// Default wait for a stream's acknowledgement.
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of unacknowledged messages per batch.
const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// Publishes to NATS JetStream (feature `nats`).
///
/// Publishes each message to a JetStream subject and
/// reports success only once the stream has acknowledged it, that is once
/// the message is stored (durably, if the stream uses file storage and
/// replicas). Plain core-NATS publishing is not offered: it has no
/// acknowledgement, so a message could be lost between relay and broker.
///
/// The stream itself is not created here: create it (with the subjects the
/// relay publishes to) with your usual tooling, so that its retention,
/// replicas and duplicate window are a deliberate choice.
///
/// # Mapping
///
/// | outbox | NATS |
/// |---|---|
/// | topic | subject `<subject prefix><topic>` (prefix empty by default) |
/// | id | header `Nats-Msg-Id`: the stream drops a second copy that arrives within its duplicate window (2 minutes by default), and the ack says `duplicate`, which counts as success |
/// | payload | message body ([`Envelope::body`]) |
/// | content type | header `Content-Type` (of the body: `application/cloudevents+json` in structured CloudEvents mode) |
/// | metadata, [`Envelope::Plain`] | headers `outbox-id`, `outbox-event-type`, `outbox-schema-version`, `outbox-partition-key` (if any), `outbox-position`, `outbox-created-at` ([`Envelope::metadata`]) |
/// | metadata, [`Envelope::CloudEventsBinary`] | headers `ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-time`, `ce-subject`, `ce-schemaversion`, `ce-sequence` (`datacontenttype` is `Content-Type`) |
/// | metadata, [`Envelope::CloudEventsStructured`] | inside the JSON body |
/// | the message's own headers | headers of the same name, in every mode |
///
/// Partition keys are not used for routing: JetStream keeps the order in
/// which a stream stores messages. A batch may hold several messages of one
/// key ([`Publisher::keeps_key_order`]): they are sent one after the other,
/// each once the stream has stored the one before, and after one fails the
/// rest of its key is not sent; different keys are pipelined. So a key's
/// messages are stored in commit order.
///
/// # Pipelining
///
/// A batch goes out in rounds: the first holds each key's first message
/// (and every keyless one), the second each key's second, and so on. A
/// round is sent without waiting, then its acknowledgements are awaited (at
/// most [`max_in_flight`](Self::with_max_in_flight) unanswered messages at
/// a time) before the next round goes. A batch of distinct keys is one
/// round; one key's run costs one round trip per message. Each message has
/// its own result.
///
/// # Errors
///
/// | failure | kind |
/// |---|---|
/// | not connected (the client is reconnecting), ack timeout, broken connection, too many acks pending | transient |
/// | message (headers + body) larger than the server's `max_payload`, checked before sending | permanent |
/// | subject that is not a valid NATS subject (empty token, whitespace, wildcard) or a header NATS cannot carry (name with `:` or non-visible ASCII, value with CR/LF) | permanent |
/// | no responders, and the JetStream API confirms that **no stream** captures the subject | permanent (`no JetStream stream captures subject ...`) |
/// | no responders while a stream does capture the subject (leader election, restart), or the API cannot be asked | transient |
/// | the stream rejects the message with a 400-class API error (larger than the stream's `max_msg_size`, header too large, stream sealed, ...) | permanent, with the server's description |
/// | any other API error (storage failure, stream full with `discard: new`, ...) | transient |
///
/// # Example
///
/// ```no_run
/// # async fn demo(outbox: impl outbox::Store) -> Result<(), Box<dyn std::error::Error>> {
/// use outbox::publisher::{Envelope, NatsPublisher};
/// use outbox::Relay;
///
/// let publisher = NatsPublisher::connect("nats://127.0.0.1:4222")
///     .await?
///     .with_subject_prefix("recruiting.")
///     .with_envelope(Envelope::CloudEventsBinary {
///         source: "/recruiting/candidates".into(),
///     });
/// let relay = Relay::builder(outbox, publisher).spawn()?;
/// # relay.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct NatsPublisher {
    /// Hidden: its options may hold credentials.
    client: Hidden<async_nats::Client>,
    js: Hidden<jetstream::Context>,
    subject_prefix: String,
    envelope: Envelope,
    ack_timeout: Duration,
    max_in_flight: usize,
}

impl NatsPublisher {
    /// Connects to the NATS server(s) at `url` (for example
    /// `nats://127.0.0.1:4222`, or several, comma separated) with the
    /// client's default options; the client reconnects on its own after a
    /// connection loss. For credentials, TLS or reconnect settings, connect
    /// the client yourself and use [`NatsPublisher::new`].
    ///
    /// # Errors
    ///
    /// The client's [`ConnectError`](async_nats::ConnectError) if the URL is
    /// invalid or no server answers.
    pub async fn connect(url: &str) -> Result<Self, async_nats::ConnectError> {
        let client = async_nats::connect(url).await?;
        Ok(Self::new(client))
    }

    /// A publisher on an existing client, with a default JetStream context.
    /// Must be called inside a tokio runtime.
    pub fn new(client: async_nats::Client) -> Self {
        Self::from_jetstream(jetstream::new(client))
    }

    /// A publisher on an existing JetStream context (for a JetStream domain
    /// or API prefix, or custom ack back-pressure). The context's timeout is
    /// replaced by the [ack timeout](Self::with_ack_timeout).
    pub fn from_jetstream(mut js: jetstream::Context) -> Self {
        js.set_timeout(DEFAULT_ACK_TIMEOUT);
        Self {
            client: Hidden(js.client()),
            js: Hidden(js),
            subject_prefix: String::new(),
            envelope: Envelope::Plain,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    setters! {
        /// Prepends `prefix` to every topic to form the subject (default empty):
        /// `with_subject_prefix("outbox.")` sends topic `candidates` to subject
        /// `outbox.candidates`.
        pub fn with_subject_prefix(prefix: impl Into<String>) => subject_prefix = prefix.into();

        /// How messages are wrapped (default [`Envelope::Plain`]).
        pub fn with_envelope(envelope: Envelope) => envelope = envelope;
    }

    /// How long to wait for a stream's acknowledgement of each message
    /// (default 5 s); also bounds JetStream API requests made to classify a
    /// failure. A message whose ack does not arrive in time is a transient
    /// failure, retried with the same `Nats-Msg-Id`.
    #[must_use]
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self.js.set_timeout(timeout);
        self
    }

    setters! {
        /// Most messages of one batch sent and not yet acknowledged (default
        /// 1024, at least 1). Keep it at or below the JetStream context's
        /// `max_ack_inflight` (5000 by default).
        pub fn with_max_in_flight(n: usize) => max_in_flight = n.max(1);
    }

    /// The subject a message is published to.
    pub fn subject_for(&self, message: &OutboxMessage) -> String {
        format!("{}{}", self.subject_prefix, message.topic())
    }

    /// Builds subject, headers and body, and checks what the server would
    /// refuse anyway. `subjects` keeps the last topic's subject, checked
    /// once: a batch's messages mostly share a topic, and a subject clones
    /// without copying.
    fn prepare(
        &self,
        m: &OutboxMessage,
        max_payload: usize,
        subjects: &mut Option<(String, Subject)>,
    ) -> Result<(Subject, PublishMessage), PublishError> {
        let subject = match subjects {
            Some((topic, subject)) if topic == m.topic() => subject.clone(),
            _ => {
                let subject = self.subject_for(m);
                if let Err(why) = check_subject(&subject) {
                    return Err(permanent(format!(
                        "{subject:?} is not a valid NATS subject: {why}"
                    )));
                }
                let subject = Subject::from(subject);
                *subjects = Some((m.topic().to_owned(), subject.clone()));
                subject
            }
        };
        let (body, content_type) = self.envelope.body(m);
        let mut headers = HeaderMap::new();
        let mut refused = None;
        self.envelope
            .each_header(m, CePrefix::Dash, |name, value| {
                if refused.is_some() {
                    return;
                }
                let nats_name = match name {
                    // Fixed names are valid header names.
                    EnvelopeName::Fixed(n) => HeaderName::from_static(n),
                    EnvelopeName::Own(n) => match HeaderName::try_from(n) {
                        Ok(n) => n,
                        Err(_) => {
                            refused = Some(format!(
                                "header name {n:?} cannot be sent over NATS (visible ASCII without ':' only)"
                            ));
                            return;
                        }
                    },
                };
                if value.contains(['\r', '\n']) {
                    refused = Some(format!(
                        "header {:?} has a value NATS cannot carry (CR or LF)",
                        name.as_str()
                    ));
                    return;
                }
                headers.insert(nats_name, HeaderValue::from(value));
            });
        if let Some(why) = refused {
            return Err(permanent(why));
        }
        if content_type.contains(['\r', '\n']) {
            return Err(permanent(
                "header \"Content-Type\" has a value NATS cannot carry (CR or LF)".to_owned(),
            ));
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from(content_type));
        headers.insert(NATS_MESSAGE_ID, HeaderValue::from(m.id().to_string()));
        // What the server counts against max_payload: the header block
        // ("NATS/1.0\r\n", "name: value\r\n" each, "\r\n") plus the body.
        let header_len = 12
            + headers
                .iter()
                .map(|(k, vs)| {
                    vs.iter()
                        .map(|v| AsRef::<[u8]>::as_ref(k).len() + 4 + v.as_str().len())
                        .sum::<usize>()
                })
                .sum::<usize>();
        let size = header_len + body.len();
        if max_payload > 0 && size > max_payload {
            return Err(permanent(format!(
                "message is {size} bytes with headers, over the server's max_payload of \
                 {max_payload} bytes"
            )));
        }
        let publish = PublishMessage::build()
            .payload(body.into())
            .headers(headers);
        Ok((subject, publish))
    }

    /// Turns a client error into a transient or permanent failure.
    async fn classify(
        &self,
        e: NatsPublishError,
        subject: &str,
        streams: &mut HashMap<String, Result<String, String>>,
    ) -> PublishError {
        match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => {
                PublishError::permanent(Failure::new("message exceeds the server's max_payload", e))
            }
            PublishErrorKind::StreamNotFound => {
                // "No responders": either no stream captures the subject
                // (a configuration error) or its leader is away for the
                // moment. Ask the API which one.
                let lookup = match streams.get(subject) {
                    Some(r) => r.clone(),
                    None => {
                        let r = match self.js.stream_by_subject(subject).await {
                            Ok(name) => Ok(name),
                            Err(le) if le.kind() == GetStreamByNameErrorKind::NotFound => {
                                Err(String::new())
                            }
                            Err(le) => Err(le.to_string()),
                        };
                        streams.insert(subject.to_owned(), r.clone());
                        r
                    }
                };
                match lookup {
                    Err(why) if why.is_empty() => PublishError::permanent(Failure::new(
                        format!("no JetStream stream captures subject {subject:?}"),
                        e,
                    )),
                    Err(why) => PublishError::transient(Failure::new(
                        format!(
                            "no responders for subject {subject:?}, and the JetStream API \
                             could not be asked which stream captures it ({why})"
                        ),
                        e,
                    )),
                    Ok(stream) => PublishError::transient(Failure::new(
                        format!(
                            "no responders for subject {subject:?} although stream \
                             {stream:?} captures it (leader election or restart?)"
                        ),
                        e,
                    )),
                }
            }
            PublishErrorKind::TimedOut => PublishError::transient(Failure::new(
                "no acknowledgement from JetStream in time",
                e,
            )),
            PublishErrorKind::BrokenPipe => PublishError::transient(Failure::new(
                "connection to the NATS server lost before the acknowledgement",
                e,
            )),
            PublishErrorKind::MaxAckPending => PublishError::transient(Failure::new(
                "too many acknowledgements pending in the JetStream context",
                e,
            )),
            PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
                PublishError::permanent(Failure::new("stream expectation not met", e))
            }
            _ => {
                let api = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<jetstream::Error>())
                    .cloned();
                match api {
                    Some(api) if rejects_for_good(&api) => PublishError::permanent(Failure::new(
                        format!("the stream rejected the message: {api}"),
                        e,
                    )),
                    Some(api) => PublishError::transient(Failure::new(
                        format!("JetStream could not store the message: {api}"),
                        e,
                    )),
                    None => PublishError::transient(Failure::new("publish failed", e)),
                }
            }
        }
    }
}

/// API errors that a retry cannot cure.
fn rejects_for_good(e: &jetstream::Error) -> bool {
    e.code() == 400
        || [
            ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
            ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
            ErrorCode::STREAM_SEALED,
        ]
        .contains(&e.error_code())
}

/// Checks a subject to publish to: tokens separated by `.`, none empty,
/// no whitespace, no wildcards.
fn check_subject(subject: &str) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("it is empty");
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace");
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Err("it has an empty token");
        }
        if token == "*" || token == ">" {
            return Err("it contains a wildcard");
        }
    }
    Ok(())
}

enum Outcome {
    Acked,
    Failed(NatsPublishError),
    Elapsed,
}

async fn await_ack(fut: PublishAckFuture, deadline: Instant) -> Outcome {
    match tokio::time::timeout_at(deadline, std::future::IntoFuture::into_future(fut)).await {
        // A duplicate is a message the stream already has: success.
        Ok(Ok(_ack)) => Outcome::Acked,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Elapsed,
    }
}

impl NatsPublisher {
    /// Sends the messages of `batch` at `indices` pipelined (at most
    /// `max_in_flight` unacknowledged) and records each one's outcome.
    async fn send_round(
        &self,
        batch: &[OutboxMessage],
        indices: &[usize],
        max_payload: usize,
        subjects: &mut Option<(String, Subject)>,
        outcomes: &mut [Option<Result<(), PublishError>>],
    ) {
        let mut failed: Vec<(usize, NatsPublishError)> = Vec::new();
        let mut pending: VecDeque<(usize, Instant, PublishAckFuture)> = VecDeque::new();
        let mut settle =
            |i: usize, outcome: Outcome, outcomes: &mut [Option<Result<(), PublishError>>]| {
                match outcome {
                    Outcome::Acked => outcomes[i] = Some(Ok(())),
                    Outcome::Failed(e) => failed.push((i, e)),
                    Outcome::Elapsed => {
                        outcomes[i] = Some(Err(transient(
                            format!(
                                "no acknowledgement from JetStream within {:?}",
                                self.ack_timeout
                            ),
                            None,
                        )))
                    }
                }
            };
        for &i in indices {
            let (subject, publish) = match self.prepare(&batch[i], max_payload, subjects) {
                Ok(p) => p,
                Err(e) => {
                    outcomes[i] = Some(Err(e));
                    continue;
                }
            };
            if pending.len() >= self.max_in_flight {
                if let Some((j, deadline, fut)) = pending.pop_front() {
                    let outcome = await_ack(fut, deadline).await;
                    settle(j, outcome, outcomes);
                }
            }
            let sent =
                tokio::time::timeout(self.ack_timeout, self.js.send_publish(subject, publish))
                    .await;
            match sent {
                Ok(Ok(fut)) => pending.push_back((i, Instant::now() + self.ack_timeout, fut)),
                Ok(Err(e)) => settle(i, Outcome::Failed(e), outcomes),
                Err(_) => settle(i, Outcome::Elapsed, outcomes),
            }
        }
        while let Some((j, deadline, fut)) = pending.pop_front() {
            let outcome = await_ack(fut, deadline).await;
            settle(j, outcome, outcomes);
        }
        let mut streams = HashMap::new();
        for (i, e) in failed {
            let subject = self.subject_for(&batch[i]);
            outcomes[i] = Some(Err(self.classify(e, &subject, &mut streams).await));
        }
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        if self.client.connection_state() != State::Connected {
            // Sending now would only queue the message in the client until
            // it reconnects; fail fast and let the relay back off.
            return batch
                .iter()
                .map(|_| {
                    Err(transient(
                        "not connected to a NATS server (the client is reconnecting)".to_owned(),
                        None,
                    ))
                })
                .collect();
        }
        let max_payload = self.client.server_info().max_payload;
        let mut outcomes: Vec<Option<Result<(), PublishError>>> =
            batch.iter().map(|_| None).collect();
        // Round r holds the r-th message of each key (keyless messages all
        // go in the first): a key's messages go out one after the other,
        // each once the stream has stored the one before; different keys
        // are pipelined together.
        let mut rounds: Vec<Vec<usize>> = Vec::new();
        let mut rank: HashMap<&str, usize> = HashMap::new();
        for (i, m) in batch.iter().enumerate() {
            let r = match m.partition_key() {
                Some(k) => {
                    let r = rank.entry(k).or_insert(0);
                    *r += 1;
                    *r - 1
                }
                None => 0,
            };
            if rounds.len() <= r {
                rounds.resize_with(r + 1, Vec::new);
            }
            rounds[r].push(i);
        }
        let mut failed_keys = FailedKeys::default();
        let mut subjects = None;
        for round in rounds {
            let mut send = Vec::with_capacity(round.len());
            for i in round {
                match failed_keys.held_back(&batch[i]) {
                    Some(e) => outcomes[i] = Some(Err(e)),
                    None => send.push(i),
                }
            }
            self.send_round(batch, &send, max_payload, &mut subjects, &mut outcomes)
                .await;
            for i in send {
                match &outcomes[i] {
                    Some(r) => failed_keys.note(&batch[i], r),
                    // No outcome counts as a failure (and is reported as
                    // one).
                    None => failed_keys.note(&batch[i], &Err(transient("no outcome".into(), None))),
                }
            }
        }
        outcomes_or_retry(outcomes)
    }

    /// A key's messages go out one after the other, each once the stream
    /// stored the one before, and none after one failed.
    fn keeps_key_order(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked() {
        assert!(check_subject("recruiting.candidates").is_ok());
        assert!(check_subject("").is_err());
        assert!(check_subject("a..b").is_err());
        assert!(check_subject("a.").is_err());
        assert!(check_subject("a b").is_err());
        assert!(check_subject("a.*").is_err());
        assert!(check_subject("a.>").is_err());
        assert!(check_subject("a.b*c").is_ok());
    }
}
