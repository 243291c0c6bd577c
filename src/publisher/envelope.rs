//! [`Envelope`]: how a broker publisher wraps a message's payload (plain,
//! or a CloudEvents envelope).

use chrono::SecondsFormat;

use crate::message::{OutboxMessage, CONTENT_TYPE_JSON};

/// How a publisher wraps a message for its destination.
///
/// - [`Envelope::Plain`] (default): the body is the payload as enqueued;
///   metadata travels in the destination's headers under the names of
///   [`Envelope::metadata`].
/// - [`Envelope::CloudEventsStructured`]: the body is a CloudEvents 1.0 JSON
///   document (`application/cloudevents+json`) holding the payload as `data`
///   (JSON) or `data_base64` (other content types).
/// - [`Envelope::CloudEventsBinary`]: the body is the payload; the
///   CloudEvents attributes travel as headers, named by each protocol
///   binding (`ce-id` over HTTP, `ce_id` on Kafka, `cloudEvents:id` on AMQP,
///   ...).
///
/// CloudEvents attributes: `id` = message id, `source` = the configured
/// source, `type` = event type, `subject` = partition key, `time` =
/// created_at, `datacontenttype` = content type, and the extensions
/// `schemaversion`, `sequence` (the outbox position) and `keysequence` (the
/// per-key sequence number, see [`OutboxMessage::key_sequence`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Envelope {
    /// The payload as enqueued, metadata in headers.
    #[default]
    Plain,
    /// A CloudEvents JSON document in the body.
    CloudEventsStructured {
        /// The CloudEvents `source` attribute (a URI reference naming the
        /// producing service, e.g. `/recruiting/candidates`).
        source: String,
    },
    /// The payload in the body, CloudEvents attributes in headers.
    CloudEventsBinary {
        /// The CloudEvents `source` attribute.
        source: String,
    },
}

/// Content type of a structured CloudEvents body.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// A header's name as [`Envelope::each_header`] gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderName<'m> {
    /// A name the crate fixes (`outbox-id`, `ce-type`, ...).
    Fixed(&'static str),
    /// The name of one of the message's own headers.
    Own(&'m str),
}

impl<'m> HeaderName<'m> {
    /// The name.
    pub(crate) fn as_str(self) -> &'m str {
        match self {
            HeaderName::Fixed(s) => s,
            HeaderName::Own(s) => s,
        }
    }
}

/// How a protocol binding names CloudEvents attributes in headers.
#[cfg(any(feature = "amqp", feature = "nats"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CePrefix {
    /// `ce-<attribute>` (HTTP, NATS).
    Dash,
    /// `cloudEvents:<attribute>` (AMQP).
    Amqp,
}

#[cfg(any(feature = "amqp", feature = "nats"))]
impl CePrefix {
    /// The header named for `attribute`, or `None` for `datacontenttype`,
    /// which the broker's own content type carries.
    fn name(self, attribute: &str) -> Option<&'static str> {
        macro_rules! names {
            ($($attr:literal),*) => {
                match (self, attribute) {
                    $((CePrefix::Dash, $attr) => Some(concat!("ce-", $attr)),
                      (CePrefix::Amqp, $attr) => Some(concat!("cloudEvents:", $attr)),)*
                    _ => None,
                }
            };
        }
        names!(
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "schemaversion",
            "sequence",
            "subject",
            "keysequence"
        )
    }
}

impl Envelope {
    /// The outbox's own metadata as `(name, value)` pairs, for
    /// [`Envelope::Plain`]: `outbox-id`, `outbox-event-type`,
    /// `outbox-schema-version`, `outbox-partition-key` (if any),
    /// `outbox-position`, `outbox-key-sequence` (if numbered),
    /// `outbox-created-at` (RFC 3339), followed by the message's own
    /// headers.
    pub fn metadata(m: &OutboxMessage) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(7 + m.headers().len());
        Envelope::each_metadata(m, |k, v| out.push((k.as_str().to_owned(), v)));
        out
    }

    /// [`Envelope::metadata`], one pair at a time, the outbox's own names
    /// as `'static` strings (no allocation for a name).
    fn each_metadata<'m>(m: &'m OutboxMessage, mut f: impl FnMut(HeaderName<'m>, String)) {
        use HeaderName::Fixed;
        f(Fixed("outbox-id"), m.id().to_string());
        f(Fixed("outbox-event-type"), m.event_type().to_owned());
        f(
            Fixed("outbox-schema-version"),
            m.schema_version().to_string(),
        );
        if let Some(k) = m.partition_key() {
            f(Fixed("outbox-partition-key"), k.to_owned());
        }
        f(Fixed("outbox-position"), m.position().to_string());
        if let Some(n) = m.key_sequence() {
            f(Fixed("outbox-key-sequence"), n.to_string());
        }
        f(
            Fixed("outbox-created-at"),
            m.created_at().to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        for (k, v) in m.headers() {
            f(HeaderName::Own(k), v.clone());
        }
    }

    /// The CloudEvents context attributes of a message, unprefixed
    /// (`id`, `source`, `specversion`, `type`, `time`, `datacontenttype`,
    /// `subject`, `schemaversion`, `sequence`). Empty for
    /// [`Envelope::Plain`].
    pub fn cloudevents_attributes(&self, m: &OutboxMessage) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(10);
        self.each_cloudevents_attribute(m, |k, v| out.push((k, v)));
        out
    }

    /// [`Envelope::cloudevents_attributes`], one at a time.
    fn each_cloudevents_attribute(
        &self,
        m: &OutboxMessage,
        mut f: impl FnMut(&'static str, String),
    ) {
        let source = match self {
            Envelope::Plain => return,
            Envelope::CloudEventsStructured { source } | Envelope::CloudEventsBinary { source } => {
                source
            }
        };
        f("specversion", "1.0".to_owned());
        f("id", m.id().to_string());
        f("source", source.clone());
        f("type", m.event_type().to_owned());
        f(
            "time",
            m.created_at().to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        f("datacontenttype", m.content_type().to_owned());
        f("schemaversion", m.schema_version().to_string());
        f("sequence", m.position().to_string());
        if let Some(k) = m.partition_key() {
            f("subject", k.to_owned());
        }
        if let Some(n) = m.key_sequence() {
            f("keysequence", n.to_string());
        }
    }

    /// The headers of a message on a broker whose messages carry string
    /// headers beside the body, one at a time: in binary CloudEvents mode
    /// the message's own headers, then the attributes under `prefix`'s
    /// names but `datacontenttype` (the broker's content type says it); in
    /// structured mode the message's own headers (the attributes are in
    /// the body); otherwise [`Envelope::metadata`]. Names the crate fixes
    /// come as `'static` strings, so a publisher builds them without
    /// allocating.
    #[cfg(any(feature = "amqp", feature = "nats"))]
    pub(crate) fn each_header<'m>(
        &self,
        m: &'m OutboxMessage,
        prefix: CePrefix,
        mut f: impl FnMut(HeaderName<'m>, String),
    ) {
        if *self == Envelope::Plain {
            return Envelope::each_metadata(m, f);
        }
        for (k, v) in m.headers() {
            f(HeaderName::Own(k), v.clone());
        }
        // Structured mode carries the attributes in the body.
        if matches!(self, Envelope::CloudEventsBinary { .. }) {
            self.each_cloudevents_attribute(m, |k, v| {
                if let Some(name) = prefix.name(k) {
                    f(HeaderName::Fixed(name), v);
                }
            });
        }
    }

    /// The body to send and its content type.
    pub fn body(&self, m: &OutboxMessage) -> (Vec<u8>, String) {
        match self {
            Envelope::Plain | Envelope::CloudEventsBinary { .. } => {
                (m.payload().to_vec(), m.content_type().to_owned())
            }
            Envelope::CloudEventsStructured { .. } => {
                let mut doc = serde_json::Map::new();
                for (k, v) in self.cloudevents_attributes(m) {
                    doc.insert(k.to_owned(), serde_json::Value::String(v));
                }
                let json_data =
                    m.content_type() == CONTENT_TYPE_JSON || m.content_type().ends_with("+json");
                match serde_json::from_slice::<serde_json::Value>(m.payload()) {
                    Ok(data) if json_data => {
                        doc.insert("data".to_owned(), data);
                    }
                    _ => {
                        doc.insert(
                            "data_base64".to_owned(),
                            serde_json::Value::String(base64_encode(m.payload())),
                        );
                    }
                }
                let body = serde_json::to_vec(&serde_json::Value::Object(doc))
                    .expect("a JSON object always serializes");
                (body, CLOUDEVENTS_JSON.to_owned())
            }
        }
    }
}

/// Standard base64 (RFC 4648, with padding), for `data_base64`.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageId;

    fn message(payload: &[u8], content_type: &str) -> OutboxMessage {
        OutboxMessage {
            seq: 7,
            id: MessageId::new(),
            topic: "candidates".into(),
            partition_key: Some("candidate-1".into()),
            event_type: "CandidateHired".into(),
            schema_version: 2,
            payload: payload.to_vec(),
            content_type: content_type.into(),
            headers: [("traceparent".to_owned(), "00-1-2-01".to_owned())].into(),
            created_at: chrono::Utc::now(),
            attempt: 1,
            key_sequence: Some(3),
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn structured_cloudevent_embeds_json_data() {
        let m = message(br#"{"a":1}"#, CONTENT_TYPE_JSON);
        let env = Envelope::CloudEventsStructured {
            source: "/recruiting".into(),
        };
        let (body, ct) = env.body(&m);
        assert_eq!(ct, CLOUDEVENTS_JSON);
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["specversion"], "1.0");
        assert_eq!(doc["id"], m.id().to_string());
        assert_eq!(doc["type"], "CandidateHired");
        assert_eq!(doc["subject"], "candidate-1");
        assert_eq!(doc["sequence"], "7");
        assert_eq!(doc["data"], serde_json::json!({"a": 1}));
    }

    #[test]
    fn structured_cloudevent_base64_encodes_binary_data() {
        let m = message(&[0, 1, 2, 255], "application/octet-stream");
        let env = Envelope::CloudEventsStructured {
            source: "/s".into(),
        };
        let doc: serde_json::Value = serde_json::from_slice(&env.body(&m).0).unwrap();
        assert_eq!(doc["data_base64"], "AAEC/w==");
        assert!(doc.get("data").is_none());
    }

    #[test]
    fn plain_metadata_names_the_idempotency_key() {
        let m = message(b"{}", CONTENT_TYPE_JSON);
        let meta = Envelope::metadata(&m);
        assert!(meta.contains(&("outbox-id".to_owned(), m.id().to_string())));
        assert!(meta.contains(&("traceparent".to_owned(), "00-1-2-01".to_owned())));
        assert!(Envelope::Plain.cloudevents_attributes(&m).is_empty());
        let (body, ct) = Envelope::Plain.body(&m);
        assert_eq!(
            (body.as_slice(), ct.as_str()),
            (&b"{}"[..], CONTENT_TYPE_JSON)
        );
    }

    #[cfg(any(feature = "amqp", feature = "nats"))]
    #[test]
    fn headers_name_every_attribute_under_the_binding_prefix() {
        let m = message(b"{}", CONTENT_TYPE_JSON);
        let collect = |e: &Envelope, prefix| {
            let mut out = Vec::new();
            e.each_header(&m, prefix, |k, v| out.push((k.as_str().to_owned(), v)));
            out
        };
        let binary = Envelope::CloudEventsBinary {
            source: "/candidates".into(),
        };
        for (prefix, text) in [(CePrefix::Dash, "ce-"), (CePrefix::Amqp, "cloudEvents:")] {
            // The message's own headers, then every attribute but the
            // content type (the broker's own header carries it).
            let mut want = vec![("traceparent".to_owned(), "00-1-2-01".to_owned())];
            want.extend(
                binary
                    .cloudevents_attributes(&m)
                    .into_iter()
                    .filter(|(k, _)| *k != "datacontenttype")
                    .map(|(k, v)| (format!("{text}{k}"), v)),
            );
            assert_eq!(collect(&binary, prefix), want);
            assert_eq!(collect(&Envelope::Plain, prefix), Envelope::metadata(&m));
        }
        let structured = Envelope::CloudEventsStructured {
            source: "/candidates".into(),
        };
        assert_eq!(
            collect(&structured, CePrefix::Dash),
            [("traceparent".to_owned(), "00-1-2-01".to_owned())]
        );
        // Every attribute is there: keysequence and subject included.
        assert_eq!(binary.cloudevents_attributes(&m).len(), 10);
    }
}
