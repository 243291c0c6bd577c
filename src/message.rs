//! Messages: what a producer enqueues ([`NewMessage`]) and what a publisher
//! receives ([`OutboxMessage`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::Event;

/// Content type stored for JSON payloads.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type stored for raw byte payloads unless the caller sets one.
pub const CONTENT_TYPE_BYTES: &str = "application/octet-stream";

/// Longest topic, partition key, event type or header name accepted, in
/// bytes. Longer values are a typed error at construction.
pub const MAX_NAME_LEN: usize = 1024;

/// The largest payload an outbox accepts unless its builder says
/// otherwise (1 MiB): the relay holds a claimed batch in memory, and most
/// brokers refuse larger messages anyway (NATS 1 MiB, Kafka 1 MB by
/// default).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Longest header value, in bytes: well above what brokers and HTTP
/// servers accept in one header (8 KiB is a common limit).
pub const MAX_HEADER_VALUE_LEN: usize = 64 * 1024;

/// A message's id: a UUIDv7 by default, and the idempotency key consumers
/// deduplicate on.
///
/// UUIDv7 ids sort by creation time, which keeps the unique index compact.
/// A caller that already has a natural idempotency key (a request id, a
/// command id) sets it with [`NewMessage::with_id`]; enqueueing the same id
/// twice is reported, never duplicated.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A fresh, time-ordered (UUIDv7) id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The id as a UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for MessageId {
    fn from(u: Uuid) -> Self {
        Self(u)
    }
}

impl From<MessageId> for Uuid {
    fn from(m: MessageId) -> Self {
        m.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::from_str(s).map(Self)
    }
}

/// Headers carried with a message (trace context, correlation id, ...).
pub type Headers = BTreeMap<String, String>;

/// A message to enqueue.
///
/// Built from a typed [`Event`] with [`NewMessage::from_event`], from any
/// serde value with [`NewMessage::json`], or from raw bytes with
/// [`NewMessage::bytes`]. Serialization happens here, so a payload that
/// cannot be encoded is an error before anything reaches the database.
///
/// ```
/// use outbox::NewMessage;
///
/// let msg = NewMessage::json("candidates", &serde_json::json!({"id": 42, "status": "hired"}))?
///     .with_partition_key("candidate-42")
///     .with_event_type("CandidateHired")
///     .with_schema_version(2)
///     .with_header("correlation-id", "req-7");
/// assert_eq!(msg.topic(), "candidates");
/// # Ok::<(), outbox::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub(crate) id: MessageId,
    pub(crate) topic: String,
    pub(crate) partition_key: Option<String>,
    pub(crate) event_type: String,
    pub(crate) schema_version: i32,
    pub(crate) payload: Vec<u8>,
    pub(crate) content_type: String,
    pub(crate) headers: Headers,
}

impl NewMessage {
    /// A message whose payload is `value` encoded as JSON. The event type
    /// defaults to the topic and the schema version to 1.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`](crate::Error::Serialize) if `value` cannot be serialized as JSON.
    pub fn json<T: Serialize + ?Sized>(topic: impl Into<String>, value: &T) -> Result<Self> {
        let payload = serde_json::to_vec(value).map_err(Error::Serialize)?;
        let topic = topic.into();
        Ok(Self {
            id: MessageId::new(),
            event_type: topic.clone(),
            topic,
            partition_key: None,
            schema_version: 1,
            payload,
            content_type: CONTENT_TYPE_JSON.to_owned(),
            headers: Headers::new(),
        })
    }

    /// A message carrying raw bytes (content type
    /// `application/octet-stream` unless set with
    /// [`with_content_type`](Self::with_content_type)).
    pub fn bytes(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        let topic = topic.into();
        Self {
            id: MessageId::new(),
            event_type: topic.clone(),
            topic,
            partition_key: None,
            schema_version: 1,
            payload: payload.into(),
            content_type: CONTENT_TYPE_BYTES.to_owned(),
            headers: Headers::new(),
        }
    }

    /// A message for a typed event: topic, event type, schema version and
    /// partition key come from the [`Event`] implementation.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`](crate::Error::Serialize) if the event cannot be serialized as JSON.
    pub fn from_event<E: Event + ?Sized>(event: &E) -> Result<Self> {
        let mut msg = Self::json(event.topic(), event)?;
        msg.event_type = E::EVENT_TYPE.to_owned();
        msg.schema_version = E::SCHEMA_VERSION;
        msg.partition_key = event.partition_key();
        Ok(msg)
    }

    setters! {
        /// Sets the id (the idempotency key).
        pub fn with_id(id: impl Into<MessageId>) => id = id.into();

        /// Sets the partition key: messages with the same key are published in
        /// commit order. Usually the aggregate's id. Without a key a message is
        /// ordered against nothing.
        pub fn with_partition_key(key: impl Into<String>) => partition_key = Some(key.into());

        /// Sets the event type (defaults to the topic).
        pub fn with_event_type(event_type: impl Into<String>) => event_type = event_type.into();

        /// Sets the payload's schema version (defaults to 1).
        pub fn with_schema_version(version: i32) => schema_version = version;

        /// Sets the payload's content type.
        pub fn with_content_type(content_type: impl Into<String>) => content_type = content_type.into();
    }

    /// Adds a header, replacing one of the same name.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition key, if any.
    pub fn partition_key(&self) -> Option<&str> {
        self.partition_key.as_deref()
    }

    /// The encoded payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The event type (defaults to the topic).
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The payload's schema version (default 1).
    pub fn schema_version(&self) -> i32 {
        self.schema_version
    }

    /// The payload's media type.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The headers set so far.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Checks what the database would otherwise reject with an opaque
    /// error, so a bad message fails before the caller's transaction is
    /// touched.
    pub(crate) fn validate(&self) -> Result<()> {
        check_name("topic", &self.topic)?;
        check_name("event type", &self.event_type)?;
        check_name("content type", &self.content_type)?;
        if let Some(k) = &self.partition_key {
            check_name("partition key", k)?;
        }
        for (k, v) in &self.headers {
            check_header(k, v)?;
        }
        Ok(())
    }

    /// Refuses a payload above `limit` bytes, before anything is written.
    pub(crate) fn check_payload(&self, limit: usize) -> Result<()> {
        if self.payload.len() > limit {
            return Err(Error::PayloadTooLarge {
                size: self.payload.len(),
                limit,
            });
        }
        Ok(())
    }

    pub(crate) fn headers_json(&self) -> Option<String> {
        if self.headers.is_empty() {
            None
        } else {
            // A map of strings always serializes.
            serde_json::to_string(&self.headers).ok()
        }
    }
}

/// A committed message handed to a [`Publisher`](crate::Publisher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub(crate) seq: i64,
    pub(crate) id: MessageId,
    pub(crate) topic: String,
    pub(crate) partition_key: Option<String>,
    pub(crate) event_type: String,
    pub(crate) schema_version: i32,
    pub(crate) payload: Vec<u8>,
    pub(crate) content_type: String,
    pub(crate) headers: Headers,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) attempt: i32,
    pub(crate) key_sequence: Option<i64>,
}

impl OutboxMessage {
    /// The id: pass it to the destination as the idempotency key.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The message's position in the outbox. Within one partition key,
    /// positions increase in commit order.
    pub fn position(&self) -> i64 {
        self.seq
    }

    /// The topic (destination).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition (ordering) key, if any.
    pub fn partition_key(&self) -> Option<&str> {
        self.partition_key.as_deref()
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The payload's schema version.
    pub fn schema_version(&self) -> i32 {
        self.schema_version
    }

    /// The encoded payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload's content type (`application/json` for JSON payloads).
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// Decodes a JSON payload.
    ///
    /// # Errors
    ///
    /// [`Error::Deserialize`](crate::Error::Deserialize) if the payload is not JSON of type
    /// `T`.
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|source| Error::Deserialize {
            id: self.id,
            source,
        })
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// When the message was enqueued (database clock).
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// The message's number within its partition key: 1, 2, 3, ... in
    /// commit order, assigned by the relay when it publishes, if the relay
    /// numbers keys ([`RelayBuilder::key_sequences`](crate::RelayBuilder::key_sequences));
    /// `None` otherwise and for messages without a key. Numbers count per
    /// partition key across all topics of the outbox: a consumer of one
    /// topic sees the numbers of the others as gaps unless each key belongs
    /// to one topic.
    ///
    /// A consumer that remembers the last number it applied per key sees a
    /// duplicate as a number not above it and a gap as a number more than
    /// one above it. A redelivered message carries the same number. Under
    /// [`OrderingPolicy::Unordered`](crate::OrderingPolicy) a message set
    /// aside after a failure leaves a gap and arrives later with a higher
    /// number.
    pub fn key_sequence(&self) -> Option<i64> {
        self.key_sequence
    }

    /// How many failed publish attempts the relay recorded before this one,
    /// plus one.
    ///
    /// It counts recorded failures, not deliveries: a message redelivered
    /// because a relay crashed (or lost its lease) after publishing it but
    /// before acknowledging it carries the same number again, 1 for a
    /// message that never failed. So `attempt() == 1` does not mean "first
    /// delivery": consumers must deduplicate by [`id`](Self::id) whatever
    /// this says. Above 1 the destination may well have the message.
    pub fn attempt(&self) -> i32 {
        self.attempt
    }

    /// Reads stored headers: a JSON object of strings, or nothing. Anything
    /// else was not written by this crate, and is refused rather than
    /// dropped: a message must not leave without the headers it was given.
    pub(crate) fn headers_from_json(json: Option<&str>) -> std::result::Result<Headers, String> {
        match json {
            None => Ok(Headers::new()),
            Some(s) => serde_json::from_str(s)
                .map_err(|e| format!("stored headers are not a JSON object of strings: {e}")),
        }
    }
}

/// What [`enqueue`](crate::PgOutbox::enqueue) did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The message was written in the caller's transaction.
    Inserted(MessageId),
    /// A message with this id already exists in the outbox; nothing was
    /// written and the caller's transaction is still usable. A producer's
    /// retry loop treats this as success.
    Duplicate(MessageId),
}

impl Enqueued {
    /// The message's id.
    pub fn id(&self) -> MessageId {
        match *self {
            Enqueued::Inserted(id) | Enqueued::Duplicate(id) => id,
        }
    }

    /// True if the id was already present.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Enqueued::Duplicate(_))
    }
}

/// What [`enqueue_batch`](crate::PgOutbox::enqueue_batch) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchEnqueued {
    /// Ids written, in the order given.
    pub inserted: Vec<MessageId>,
    /// Ids that were already present (or repeated within the batch), in the
    /// order given; nothing was written for them.
    pub duplicates: Vec<MessageId>,
}

/// A name the database stores as text: not empty, at most
/// [`MAX_NAME_LEN`] bytes, no NUL (PostgreSQL's text refuses it, and the
/// refusal would abort the caller's transaction).
pub(crate) fn check_name(field: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(Error::InvalidMessage(format!("{field} is empty")));
    }
    check_text(field, v)
}

/// Text the database stores: at most [`MAX_NAME_LEN`] bytes, no NUL.
pub(crate) fn check_text(field: &str, v: &str) -> Result<()> {
    if v.len() > MAX_NAME_LEN {
        return Err(Error::InvalidMessage(format!(
            "{field} is {} bytes, more than {MAX_NAME_LEN}",
            v.len()
        )));
    }
    if v.contains('\0') {
        return Err(Error::InvalidMessage(format!(
            "{field} contains a NUL byte"
        )));
    }
    Ok(())
}

/// A header every built-in publisher can carry: HTTP and NATS refuse
/// control characters (CR and LF above all, which would split a header),
/// and a name with white space or `:`. Refused at enqueue rather than
/// dead-lettered later, where under an ordered policy it would block its
/// key.
pub(crate) fn check_header(name: &str, value: &str) -> Result<()> {
    check_name("header name", name)?;
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || *c == ':')
    {
        return Err(Error::InvalidMessage(format!(
            "header name {name:?} contains {c:?}, which HTTP and NATS headers cannot carry"
        )));
    }
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(Error::InvalidMessage(format!(
            "header {name:?} is {} bytes, more than {MAX_HEADER_VALUE_LEN}",
            value.len()
        )));
    }
    // A tab is the one control character an HTTP field value may hold.
    if let Some(c) = value.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(Error::InvalidMessage(format!(
            "header {name:?} contains {c:?}, which HTTP and NATS headers cannot carry"
        )));
    }
    Ok(())
}

/// Checks that a JSON value can be stored as PostgreSQL `jsonb`, which
/// refuses the NUL character (`\u0000`) in any string or object key.
pub(crate) fn check_json(field: &str, v: &serde_json::Value) -> Result<()> {
    use serde_json::Value;
    let nul = || {
        Err(Error::InvalidMessage(format!(
            "{field} contains a NUL character (\\u0000)"
        )))
    };
    match v {
        Value::String(s) if s.contains('\0') => nul(),
        Value::Array(items) => items.iter().try_for_each(|i| check_json(field, i)),
        Value::Object(map) => {
            for (k, i) in map {
                if k.contains('\0') {
                    return nul();
                }
                check_json(field, i)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refused(r: Result<()>) -> String {
        match r {
            Err(Error::InvalidMessage(m)) => m,
            other => panic!("expected InvalidMessage, got {other:?}"),
        }
    }

    #[test]
    fn headers_publishers_cannot_carry_are_refused() {
        assert!(check_header("traceparent", "00-abc-def-01").is_ok());
        assert!(check_header("x-note", "tab\tinside is fine").is_ok());
        assert!(check_header("x-utf8", "Zoë ✓").is_ok());
        for (name, value) in [
            ("x-split", "a\r\nInjected: yes"),
            ("x-lf", "a\nb"),
            ("x-bell", "a\u{7}"),
            ("x-del", "a\u{7f}"),
            ("x-c1", "a\u{85}"),
            ("x-nul", "a\0"),
            ("bad name", "v"),
            ("bad:name", "v"),
            ("bad\nname", "v"),
            ("", "v"),
        ] {
            let m = refused(check_header(name, value));
            assert!(m.contains("header"), "{m}");
        }
        let long = "v".repeat(MAX_HEADER_VALUE_LEN + 1);
        assert!(refused(check_header("x-long", &long)).contains("bytes"));
    }

    #[test]
    fn enqueue_validation_covers_headers() {
        let ok = NewMessage::bytes("t", b"x".to_vec()).with_header("x-ok", "fine");
        assert!(ok.validate().is_ok());
        let bad = NewMessage::bytes("t", b"x".to_vec()).with_header("x-bad", "a\r\nb");
        assert!(refused(bad.validate()).contains("x-bad"));
    }

    #[test]
    fn json_with_nul_anywhere_is_refused() {
        assert!(check_json("d", &json!({"a": ["b", {"c": 1}], "n": null})).is_ok());
        for v in [
            json!("a\u{0}b"),
            json!({"k": "v\u{0}"}),
            json!({"k\u{0}": 1}),
            json!([1, [2, ["\u{0}"]]]),
        ] {
            assert!(refused(check_json("d", &v)).contains("NUL"));
        }
    }
}
