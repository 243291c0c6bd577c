//! Webhook publisher (feature `http`), documented on [`WebhookPublisher`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::failure::Failure;
use super::{Envelope, Publisher};
use crate::error::{Error, PublishError, Result};
use crate::message::OutboxMessage;

/// Name of the header carrying the message id.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
/// Name of the header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Outbox-Signature";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONCURRENCY: usize = 16;
const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Response bytes read for an error excerpt.
const EXCERPT_READ: usize = 1024;
/// Characters of the response body kept in an error.
const EXCERPT_CHARS: usize = 200;

type HmacSha256 = Hmac<Sha256>;

/// A signing key that never shows itself.
#[derive(Clone)]
struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Posts each message to a webhook (feature `http`): one signed HTTP `POST`
/// per message.
///
/// ```no_run
/// # async fn demo(outbox: outbox::SqliteOutbox) -> outbox::Result<()> {
/// use std::time::Duration;
/// use outbox::publisher::WebhookPublisher;
/// use outbox::Relay;
///
/// let publisher = WebhookPublisher::builder("https://payroll.example.com/hooks/outbox")
///     .topic_url("recruiting.offers", "https://crm.example.com/hooks/offers")
///     .signing_secret(std::env::var("WEBHOOK_SECRET").expect("secret"))
///     .timeout(Duration::from_secs(5))
///     .concurrency(16)
///     .build()?;
/// let relay = Relay::builder(outbox, publisher).spawn()?;
/// # relay.shutdown().await?;
/// # Ok(()) }
/// ```
///
/// # Request
///
/// | outbox | HTTP request |
/// |---|---|
/// | topic | URL: the [per-topic URL](WebhookPublisherBuilder::topic_url) if one is set, else the default URL; always `POST` |
/// | id | `Idempotency-Key: <message id>` (every envelope): the same on every re-send |
/// | payload | body, wrapped by the [`Envelope`]; `Content-Type` is the message's content type (`application/cloudevents+json` in structured mode) |
/// | metadata ([`Envelope::Plain`]) | headers of [`Envelope::metadata`]: `outbox-id`, `outbox-event-type`, `outbox-schema-version`, `outbox-partition-key`, `outbox-position`, `outbox-created-at`, then the message's own headers |
/// | CloudEvents attributes ([`Envelope::CloudEventsBinary`]) | `ce-id`, `ce-source`, `ce-specversion`, `ce-type`, `ce-time`, `ce-subject`, `ce-schemaversion`, `ce-sequence` (values percent-encoded as the CloudEvents HTTP binding says); `datacontenttype` is the `Content-Type`; then the message's own headers |
/// | [`Envelope::CloudEventsStructured`] | body is the CloudEvents JSON document; the message's own headers as headers |
/// | signature | `Outbox-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` when a [signing secret](WebhookPublisherBuilder::signing_secret) is set |
///
/// Redirects are not followed (a `POST` turned into a `GET` by a `302`
/// would lose the body yet look delivered): a `3xx` answer is a permanent
/// failure; configure the final URL. TLS uses reqwest's rustls backend
/// (aws-lc-rs), which checks certificates against the operating system's
/// trust store (`rustls-platform-verifier`): the image needs a CA bundle,
/// or pass a [client](WebhookPublisherBuilder::client) with your own roots.
///
/// # Response
///
/// | answer | kind |
/// |---|---|
/// | `2xx` | delivered |
/// | `429 Too Many Requests` | transient; a `Retry-After` (seconds or HTTP date) sets the wait before the next attempt |
/// | `408`, `5xx` | transient (a `Retry-After` on them is honoured too, e.g. on `503`) |
/// | timeout, connection refused or reset, TLS or DNS failure | transient |
/// | `3xx`, other `4xx` | permanent: dead-lettered, with the status and a short excerpt of the response body in the dead letter's `last_error` |
/// | a message header that HTTP cannot carry (control characters) | permanent |
///
/// The requests of a batch go out in parallel, at most
/// [`concurrency`](WebhookPublisherBuilder::concurrency) at a time
/// (default 16). The relay never puts two messages of one partition key in
/// one batch, so per-key order holds.
///
/// # Verifying the signature
///
/// The sender computes, for each attempt,
///
/// ```text
/// t         = current Unix time in whole seconds, in decimal ASCII
/// signed    = t + "." + raw request body bytes
/// v1        = lowercase hex of HMAC-SHA256(key = secret, message = signed)
/// header    = "Outbox-Signature: t=" + t + ",v1=" + v1
/// ```
///
/// A receiver:
///
/// 1. reads the header and splits it at `,` into `key=value` pairs; takes
///    the one `t` and every `v1` (ignoring keys it does not know, so new
///    schemes can be added beside `v1`);
/// 2. rejects the request if `t` is missing or not all digits, or if it is
///    further than the tolerance (we suggest 5 minutes) from the
///    receiver's clock, in either direction: this bounds replays of a
///    captured request;
/// 3. computes HMAC-SHA256 over the header's `t` exactly as sent, a `.`,
///    and the **raw** body bytes as received (before any JSON parsing);
/// 4. accepts if any `v1` equals it, comparing in **constant time**;
/// 5. deduplicates on `Idempotency-Key`: a valid signature does not mean
///    the message is new (the relay delivers at least once).
///
/// In Rust, [`verify_signature`] does steps 1–4.
///
/// The secret never appears in `Debug` output, logs or errors.
#[derive(Clone)]
pub struct WebhookPublisher {
    inner: Arc<Inner>,
    concurrency: usize,
}

struct Inner {
    client: reqwest::Client,
    url: Url,
    topic_urls: HashMap<String, Url>,
    secret: Option<Secret>,
    envelope: Envelope,
    timeout: Duration,
    max_retry_after: Duration,
}

/// Configures a [`WebhookPublisher`].
pub struct WebhookPublisherBuilder {
    url: String,
    topic_urls: Vec<(String, String)>,
    secret: Option<Secret>,
    envelope: Envelope,
    timeout: Duration,
    concurrency: usize,
    max_retry_after: Duration,
    client: Option<reqwest::Client>,
}

impl WebhookPublisher {
    /// A builder posting every message to `url` (unless a
    /// [per-topic URL](WebhookPublisherBuilder::topic_url) applies).
    pub fn builder(url: impl Into<String>) -> WebhookPublisherBuilder {
        WebhookPublisherBuilder {
            url: url.into(),
            topic_urls: Vec::new(),
            secret: None,
            envelope: Envelope::default(),
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            client: None,
        }
    }

    /// The URL a message is posted to.
    pub fn url_for(&self, message: &OutboxMessage) -> &Url {
        self.inner.url_for(message.topic())
    }
}

impl fmt::Debug for WebhookPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let topics: HashMap<&str, String> = i
            .topic_urls
            .iter()
            .map(|(t, u)| (t.as_str(), redact(u)))
            .collect();
        f.debug_struct("WebhookPublisher")
            .field("url", &redact(&i.url))
            .field("topic_urls", &topics)
            .field("secret", &i.secret)
            .field("envelope", &i.envelope)
            .field("timeout", &i.timeout)
            .field("concurrency", &self.concurrency)
            .field("max_retry_after", &i.max_retry_after)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for WebhookPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact_str =
            |s: &str| Url::parse(s).map_or_else(|_| "<invalid url>".into(), |u| redact(&u));
        let topics: Vec<(&str, String)> = self
            .topic_urls
            .iter()
            .map(|(t, u)| (t.as_str(), redact_str(u)))
            .collect();
        f.debug_struct("WebhookPublisherBuilder")
            .field("url", &redact_str(&self.url))
            .field("topic_urls", &topics)
            .field("secret", &self.secret)
            .field("envelope", &self.envelope)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("max_retry_after", &self.max_retry_after)
            .finish_non_exhaustive()
    }
}

impl WebhookPublisherBuilder {
    /// Posts messages of `topic` to `url` instead of the default URL.
    #[must_use]
    pub fn topic_url(mut self, topic: impl Into<String>, url: impl Into<String>) -> Self {
        self.topic_urls.push((topic.into(), url.into()));
        self
    }

    setters! {
        /// Signs every request with HMAC-SHA256 under this secret (header
        /// `Outbox-Signature`; see the module documentation). Without a secret
        /// no signature is sent. Use at least 32 random bytes.
        pub fn signing_secret(secret: impl Into<Vec<u8>>) => secret = Some(Secret(secret.into().into()));

        /// How messages are wrapped (default [`Envelope::Plain`]).
        pub fn envelope(envelope: Envelope) => envelope = envelope;

        /// Time limit of one request, from connecting to the end of the
        /// response (default 10 s). Keep the worst case of a batch
        /// (`batch size / concurrency * timeout`) below the relay's lease TTL,
        /// e.g. with a smaller relay batch size.
        pub fn timeout(timeout: Duration) => timeout = timeout;

        /// Most requests in flight at once (default 16).
        pub fn concurrency(n: usize) => concurrency = n;

        /// Upper bound on a `Retry-After` the publisher passes to the relay
        /// (default 5 minutes), so a misbehaving receiver cannot park messages
        /// for days.
        pub fn max_retry_after(d: Duration) => max_retry_after = d;

        /// Uses your own client (proxy, custom roots, client certificates).
        /// Build it with `redirect(reqwest::redirect::Policy::none())`: a
        /// followed redirect can turn the `POST` into a body-less `GET`. The
        /// [timeout](Self::timeout) still applies per request.
        pub fn client(client: reqwest::Client) => client = Some(client);
    }

    /// Checks the URLs and settings and builds the client.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming the setting
    /// that is wrong (a URL that is not http or https, a concurrency of 0, a
    /// zero timeout) or if the HTTP client cannot be built.
    pub fn build(self) -> Result<WebhookPublisher> {
        let bad = |field: &'static str, reason: String| Error::InvalidConfig { field, reason };
        let parse = |field: &'static str, s: &str| -> Result<Url> {
            let url = Url::parse(s).map_err(|e| bad(field, format!("{e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(bad(field, "must be an http or https URL".into()));
            }
            Ok(url)
        };
        let url = parse("url", &self.url)?;
        let mut topic_urls = HashMap::new();
        for (topic, u) in &self.topic_urls {
            topic_urls.insert(topic.clone(), parse("topic_url", u)?);
        }
        if self.concurrency == 0 {
            return Err(bad("concurrency", "must be at least 1".into()));
        }
        if self.timeout.is_zero() {
            return Err(bad("timeout", "must be greater than zero".into()));
        }
        if matches!(&self.secret, Some(s) if s.0.is_empty()) {
            return Err(bad("signing_secret", "must not be empty".into()));
        }
        let client = match self.client {
            Some(c) => c,
            None => reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("outbox/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(self.timeout)
                .build()
                .map_err(|e| bad("client", e.to_string()))?,
        };
        Ok(WebhookPublisher {
            inner: Arc::new(Inner {
                client,
                url,
                topic_urls,
                secret: self.secret,
                envelope: self.envelope,
                timeout: self.timeout,
                max_retry_after: self.max_retry_after,
            }),
            concurrency: self.concurrency,
        })
    }
}

/// A request ready to send, independent of the batch's lifetime.
struct Prepared {
    url: Url,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Inner {
    fn url_for(&self, topic: &str) -> &Url {
        self.topic_urls.get(topic).unwrap_or(&self.url)
    }

    fn prepare(&self, m: &OutboxMessage) -> std::result::Result<Prepared, PublishError> {
        let (body, content_type) = self.envelope.body(m);
        let mut headers = HeaderMap::new();
        let mut add = |name: &str, value: &str| -> std::result::Result<(), PublishError> {
            let n = HeaderName::from_bytes(name.as_bytes());
            let v = HeaderValue::from_bytes(value.as_bytes());
            match (n, v) {
                (Ok(n), Ok(v)) => {
                    headers.append(n, v);
                    Ok(())
                }
                _ => Err(PublishError::permanent(format!(
                    "message {}: header {name:?} cannot be sent over HTTP (invalid name or \
                     control characters in the value)",
                    m.id()
                ))),
            }
        };
        match &self.envelope {
            Envelope::Plain => {
                for (k, v) in Envelope::metadata(m) {
                    add(&k, &v)?;
                }
            }
            Envelope::CloudEventsBinary { .. } => {
                for (k, v) in self.envelope.cloudevents_attributes(m) {
                    if k != "datacontenttype" {
                        add(&format!("ce-{k}"), &percent_encode_header(&v))?;
                    }
                }
                for (k, v) in m.headers() {
                    add(k, v)?;
                }
            }
            Envelope::CloudEventsStructured { .. } => {
                for (k, v) in m.headers() {
                    add(k, v)?;
                }
            }
        }
        // Ours last, replacing any message header of the same name.
        let ct = HeaderValue::from_str(&content_type).map_err(|_| {
            PublishError::permanent(format!(
                "message {}: content type {content_type:?} is not a valid header value",
                m.id()
            ))
        })?;
        headers.insert(CONTENT_TYPE, ct);
        headers.insert(
            HeaderName::from_static("idempotency-key"),
            HeaderValue::from_str(&m.id().to_string()).expect("a UUID is a valid header value"),
        );
        Ok(Prepared {
            url: self.url_for(m.topic()).clone(),
            headers,
            body,
        })
    }

    async fn send(&self, p: Prepared) -> std::result::Result<(), PublishError> {
        let Prepared {
            url,
            mut headers,
            body,
        } = p;
        if let Some(secret) = &self.secret {
            let t = unix_seconds(SystemTime::now());
            let value = signature_header(&secret.0, t, &body);
            headers.insert(
                HeaderName::from_static("outbox-signature"),
                HeaderValue::from_str(&value).expect("the signature is ASCII"),
            );
        }
        let shown = redact(&url);
        let response = self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .timeout(self.timeout)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Err(request_error(e, &shown)),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .map(|d| d.min(self.max_retry_after));
        let excerpt = excerpt(response).await;
        let what = format!("POST {shown} answered {status}{excerpt}");
        if is_transient_status(status) {
            let e = PublishError::transient(what);
            Err(match retry_after {
                Some(d) => e.with_retry_after(d),
                None => e,
            })
        } else if status.is_redirection() {
            Err(PublishError::permanent(format!(
                "{what} (redirects are not followed; configure the final URL)"
            )))
        } else {
            Err(PublishError::permanent(what))
        }
    }
}

fn is_transient_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT || s.is_server_error()
}

/// A request that got no answer: transient, except a request reqwest could
/// not even build.
fn request_error(e: reqwest::Error, shown: &str) -> PublishError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let permanent = e.is_builder();
    let err = Failure::new(format!("POST {shown} {what}"), e.without_url());
    if permanent {
        PublishError::permanent(err)
    } else {
        PublishError::transient(err)
    }
}

/// `": <first characters of the body>"`, or nothing for an empty body.
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < EXCERPT_READ {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(EXCERPT_READ);
    let text = String::from_utf8_lossy(&buf);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return String::new();
    }
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() || buf.len() == EXCERPT_READ {
        out.push('…');
    }
    format!(": {out}")
}

/// The URL without credentials, query or fragment, for errors and logs.
fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// Percent-encodes a CloudEvents attribute for an HTTP header, as the
/// CloudEvents HTTP binding (3.1.3.2) says: space, `"`, `%` and everything
/// outside printable ASCII, as UTF-8 bytes.
fn percent_encode_header(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses a `Retry-After` value: delay-seconds, or an HTTP date
/// (IMF-fixdate, e.g. `Wed, 21 Oct 2015 07:28:00 GMT`) from which `now` is
/// subtracted. A date in the past gives zero.
fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let now: chrono::DateTime<chrono::Utc> = now.into();
    Some((at.to_utc() - now).to_std().unwrap_or(Duration::ZERO))
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Outbox-Signature` header value the publisher sends for `body` at
/// `unix_seconds`: `t=<unix_seconds>,v1=<hex HMAC-SHA256 of "t.body">`.
/// For receivers' tests and for other senders that want to sign alike.
pub fn signature_header(secret: &[u8], unix_seconds: u64, body: &[u8]) -> String {
    let t = unix_seconds.to_string();
    let sig = mac(secret, &t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(sig))
}

/// Checks an `Outbox-Signature` header value against the raw request
/// body, as [`WebhookPublisher`](WebhookPublisher#verifying-the-signature)
/// describes: true if the
/// timestamp is within `tolerance` of `now` (either direction) and any
/// `v1` signature matches. Signatures are compared in constant time.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use outbox::publisher::{signature_header, verify_signature};
///
/// let now = SystemTime::now();
/// let t = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
/// let header = signature_header(b"s3cret", t, b"{\"id\":1}");
/// let five_min = Duration::from_secs(300);
/// assert!(verify_signature(b"s3cret", &header, b"{\"id\":1}", now, five_min));
/// assert!(!verify_signature(b"wrong", &header, b"{\"id\":1}", now, five_min));
/// assert!(!verify_signature(b"s3cret", &header, b"{\"id\":2}", now, five_min));
/// ```
pub fn verify_signature(
    secret: &[u8],
    header_value: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> bool {
    let mut timestamp: Option<&str> = None;
    let mut signatures = Vec::new();
    for part in header_value.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            return false;
        };
        match k.trim() {
            "t" if timestamp.is_none() => timestamp = Some(v.trim()),
            "t" => return false,
            "v1" => signatures.push(v.trim()),
            _ => {}
        }
    }
    let Some(t) = timestamp else {
        return false;
    };
    if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(secs) = t.parse::<u64>() else {
        return false;
    };
    if Duration::from_secs(unix_seconds(now).abs_diff(secs)) > tolerance {
        return false;
    }
    let expected = mac(secret, t, body);
    signatures.iter().any(|s| match hex::decode(s) {
        Ok(sig) => expected.clone().verify_slice(&sig).is_ok(),
        Err(_) => false,
    })
}

#[async_trait]
impl Publisher for WebhookPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<std::result::Result<(), PublishError>> {
        let mut out: Vec<Option<std::result::Result<(), PublishError>>> =
            (0..batch.len()).map(|_| None).collect();
        let limit = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = JoinSet::new();
        for (i, m) in batch.iter().enumerate() {
            let prepared = match self.inner.prepare(m) {
                Ok(p) => p,
                Err(e) => {
                    out[i] = Some(Err(e));
                    continue;
                }
            };
            let permit = limit
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let inner = self.inner.clone();
            tasks.spawn(async move {
                let r = inner.send(prepared).await;
                drop(permit);
                (i, r)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, r)) = joined {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(PublishError::transient("webhook request task panicked")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 2015-10-21 07:27:50 UTC
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn signature_round_trip_and_rejections() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let tol = Duration::from_secs(300);
        let h = signature_header(secret, 1_700_000_000, b"body");
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
        assert!(verify_signature(secret, &h, b"body", now, tol));
        // Clock skew within the window, either direction.
        assert!(verify_signature(secret, &h, b"body", now + tol, tol));
        assert!(verify_signature(secret, &h, b"body", now - tol, tol));
        assert!(!verify_signature(
            secret,
            &h,
            b"body",
            now + tol + Duration::from_secs(1),
            tol
        ));
        assert!(!verify_signature(secret, &h, b"bodY", now, tol));
        assert!(!verify_signature(b"other", &h, b"body", now, tol));
        // A rotated key: any v1 may match; unknown schemes are ignored.
        let other = signature_header(b"old", 1_700_000_000, b"body");
        let v1_old = other.split_once(",v1=").unwrap().1;
        let both = format!("{h},v1={v1_old},v2=zz");
        assert!(verify_signature(b"old", &both, b"body", now, tol));
        // Malformed headers.
        for bad in [
            "",
            "v1=00",
            "t=,v1=00",
            "t=+1700000000,v1=00",
            "t=1,t=1",
            "garbage",
        ] {
            assert!(!verify_signature(secret, bad, b"body", now, tol), "{bad}");
        }
        // The timestamp is signed: changing it breaks the signature.
        let moved = h.replacen("t=1700000000", "t=1700000001", 1);
        assert!(!verify_signature(secret, &moved, b"body", now, tol));
    }

    #[test]
    fn cloudevents_header_values_are_percent_encoded() {
        assert_eq!(percent_encode_header("a b\"%é/x"), "a%20b%22%25%C3%A9/x");
    }

    #[test]
    fn debug_redacts_the_secret_and_url_credentials() {
        let p = WebhookPublisher::builder("https://user:pw@hooks.example.com/in?token=abc")
            .signing_secret("super-secret-value")
            .build()
            .unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains("super-secret-value"), "{shown}");
        assert!(
            !shown.contains(":pw@") && !shown.contains("token"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
        let b =
            WebhookPublisher::builder("https://hooks.example.com/").signing_secret("xyz-secret");
        assert!(!format!("{b:?}").contains("xyz-secret"));
    }
}
