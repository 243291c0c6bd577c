//! A publisher for Redis Streams (feature `redis`):
//! [`RedisStreamsPublisher`], whose documentation holds the mapping table,
//! the deduplication guard and the error classification.

use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, RedisError, Script};
use async_trait::async_trait;

use super::failure::{outcomes_or_retry, permanent, transient};
use super::hidden::Hidden;
use super::{Envelope, Publisher};
use crate::error::PublishError;
use crate::message::OutboxMessage;

const DEFAULT_DEDUPE_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets the dedupe key and appends to the stream in one atomic step.
///
/// KEYS[1] dedupe key, KEYS[2] stream; ARGV[1] TTL in ms, ARGV[2] MAXLEN
/// (0 = no trimming), ARGV[3..] field/value pairs. Never raises: returns
/// `{1, entry id}` (appended), `{0, entry id of the first copy}`
/// (duplicate) or `{-1, error}` (nothing written).
const DEDUPE_XADD: &str = r#"
local set = redis.pcall('SET', KEYS[1], '', 'NX', 'PX', ARGV[1])
if type(set) == 'table' and set.err then
  return {-1, set.err}
end
if not set then
  local first = redis.pcall('GET', KEYS[1])
  if type(first) ~= 'string' then first = '' end
  return {0, first}
end
local args = {KEYS[2]}
local maxlen = tonumber(ARGV[2])
if maxlen and maxlen > 0 then
  args[#args + 1] = 'MAXLEN'
  args[#args + 1] = '~'
  args[#args + 1] = ARGV[2]
end
args[#args + 1] = '*'
for i = 3, #ARGV do
  args[#args + 1] = ARGV[i]
end
local id = redis.pcall('XADD', unpack(args))
if type(id) == 'table' and id.err then
  redis.call('DEL', KEYS[1])
  return {-1, id.err}
end
redis.call('SET', KEYS[1], id, 'PX', ARGV[1])
return {1, id}
"#;

/// Appends messages to Redis Streams with an atomic deduplication guard
/// (feature `redis`).
///
/// # Mapping
///
/// Each message becomes one stream entry (`XADD <stream> [MAXLEN ~ n] *
/// field value ...`):
///
/// | outbox | Redis |
/// |---|---|
/// | topic | stream key `<stream prefix><topic>` (prefix empty by default) |
/// | id | field `id`, and the dedupe key `<dedupe prefix><id>` (default prefix `outbox:dedupe:`) |
/// | event type | field `event_type` |
/// | schema version | field `schema_version` |
/// | position | field `position` |
/// | created at | field `created_at` (RFC 3339) |
/// | partition key | field `partition_key` (absent if none) |
/// | payload | field `payload` ([`Envelope::body`]: a CloudEvents JSON document in structured mode) |
/// | content type | field `content_type` (of `payload`) |
/// | the message's own headers | field `headers`: a JSON object of strings (absent if none) |
/// | metadata, [`Envelope::CloudEventsBinary`] | fields `ce_specversion`, `ce_id`, `ce_source`, `ce_type`, `ce_time`, `ce_subject`, `ce_schemaversion`, `ce_sequence` |
///
/// # Deduplication
///
/// Streams do not deduplicate, so every message goes through a Lua script
/// that runs atomically on the server: `SET <dedupe key> NX PX <ttl>`,
/// and `XADD` only if that `SET` succeeded; the dedupe key then holds the
/// new entry's id. A second copy of a message (a retry after a lost
/// reply, a relay crash) finds the key, appends nothing and counts as
/// published. If `XADD` fails, the key is removed again so that the retry
/// is not mistaken for a duplicate. The guard lasts the
/// [dedupe TTL](Self::with_dedupe_ttl) (default 24 hours): a copy that
/// arrives later is appended again (consumers can still deduplicate on
/// the `id` field). The keys of the script are the dedupe key and the
/// stream: on Redis Cluster both must hash to the same slot; this
/// publisher targets a standalone server (or a Sentinel-managed primary).
///
/// # Pipelining
///
/// A batch is sent in one round trip: `SCRIPT LOAD` followed by one
/// `EVALSHA` per message, pipelined; each message has its own result.
///
/// # Connection
///
/// One multiplexed connection, opened lazily on the first batch and
/// reopened on the batch after a connection error.
///
/// # Errors
///
/// | failure | kind |
/// |---|---|
/// | cannot connect, connection lost, no reply within the [timeout](Self::with_timeout) | transient (reconnects on the next batch) |
/// | the server refuses the write (`OOM`, `READONLY` replica, `LOADING`, ...) | transient |
/// | payload larger than the [configured maximum](Self::with_max_payload) | permanent |
/// | the stream key holds another type (`WRONGTYPE`), or ACLs forbid the commands (`NOPERM`) | permanent |
///
/// # Example
///
/// ```no_run
/// # async fn demo(outbox: impl outbox::Store) -> Result<(), Box<dyn std::error::Error>> {
/// use outbox::publisher::RedisStreamsPublisher;
/// use outbox::Relay;
///
/// let publisher = RedisStreamsPublisher::from_url("redis://127.0.0.1:6379")?
///     .with_stream_prefix("events:")
///     .with_max_len(1_000_000);
/// let relay = Relay::builder(outbox, publisher).spawn()?;
/// # relay.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisStreamsPublisher {
    /// Hidden: its connection info may hold a password.
    client: Hidden<Client>,
    script: Hidden<Script>,
    stream_prefix: String,
    dedupe_prefix: String,
    dedupe_ttl: Duration,
    max_len: Option<u64>,
    max_payload: Option<usize>,
    timeout: Duration,
    envelope: Envelope,
    conn: Hidden<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
}

impl RedisStreamsPublisher {
    /// A publisher for the server at `url` (`redis://[:password@]host:port[/db]`,
    /// `rediss://` for TLS if the `redis` crate is built with it). Only
    /// parses the URL; the connection opens on the first batch.
    ///
    /// # Errors
    ///
    /// The client's [`RedisError`] if the URL cannot be parsed.
    pub fn from_url(url: &str) -> Result<Self, RedisError> {
        Ok(Self::new(Client::open(url)?))
    }

    /// A publisher on an existing client.
    pub fn new(client: Client) -> Self {
        Self {
            client: Hidden(client),
            script: Hidden(Script::new(DEDUPE_XADD)),
            stream_prefix: String::new(),
            dedupe_prefix: "outbox:dedupe:".to_owned(),
            dedupe_ttl: DEFAULT_DEDUPE_TTL,
            max_len: None,
            max_payload: None,
            timeout: DEFAULT_TIMEOUT,
            envelope: Envelope::Plain,
            conn: Hidden(tokio::sync::Mutex::new(None)),
        }
    }

    setters! {
        /// Prepends `prefix` to every topic to form the stream key (default
        /// empty).
        pub fn with_stream_prefix(prefix: impl Into<String>) => stream_prefix = prefix.into();

        /// Prefix of the dedupe keys (default `outbox:dedupe:`).
        pub fn with_dedupe_prefix(prefix: impl Into<String>) => dedupe_prefix = prefix.into();

        /// How long a message's dedupe key lives (default 24 hours, at least
        /// 1 ms). Longer than any plausible redelivery delay, shorter than
        /// memory allows: each key costs about 100 bytes.
        pub fn with_dedupe_ttl(ttl: Duration) => dedupe_ttl = ttl.max(Duration::from_millis(1));

        /// Trims each stream to about `n` entries on every append
        /// (`MAXLEN ~ n`); unbounded by default. `0` turns trimming off.
        pub fn with_max_len(n: u64) => max_len = (n > 0).then_some(n);

        /// Refuses (permanently) a message whose stream `payload` field would
        /// be larger than `bytes`; unlimited by default (Redis itself accepts
        /// up to 512 MB).
        pub fn with_max_payload(bytes: usize) => max_payload = Some(bytes);

        /// How long connecting, and each batch's round trip, may take
        /// (default 5 s).
        pub fn with_timeout(timeout: Duration) => timeout = timeout;

        /// How messages are wrapped (default [`Envelope::Plain`]).
        pub fn with_envelope(envelope: Envelope) => envelope = envelope;
    }

    /// The stream key a message is appended to.
    pub fn stream_for(&self, message: &OutboxMessage) -> String {
        format!("{}{}", self.stream_prefix, message.topic())
    }

    /// The key that guards a message against a second append.
    pub fn dedupe_key_for(&self, message: &OutboxMessage) -> String {
        format!("{}{}", self.dedupe_prefix, message.id())
    }

    /// The stream entry's fields, in order, or why the message cannot be
    /// sent.
    fn fields(&self, m: &OutboxMessage) -> Result<Vec<(String, Vec<u8>)>, PublishError> {
        let (body, content_type) = self.envelope.body(m);
        if let Some(max) = self.max_payload {
            if body.len() > max {
                return Err(permanent(format!(
                    "payload is {} bytes, over the configured maximum of {max} bytes",
                    body.len()
                )));
            }
        }
        let mut f: Vec<(String, Vec<u8>)> = vec![
            ("id".into(), m.id().to_string().into_bytes()),
            ("event_type".into(), m.event_type().as_bytes().to_vec()),
            (
                "schema_version".into(),
                m.schema_version().to_string().into_bytes(),
            ),
            ("position".into(), m.position().to_string().into_bytes()),
            (
                "created_at".into(),
                m.created_at()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .into_bytes(),
            ),
        ];
        if let Some(k) = m.partition_key() {
            f.push(("partition_key".into(), k.as_bytes().to_vec()));
        }
        f.push(("content_type".into(), content_type.into_bytes()));
        if !m.headers().is_empty() {
            let json = serde_json::to_vec(m.headers()).expect("a map of strings serializes");
            f.push(("headers".into(), json));
        }
        if let Envelope::CloudEventsBinary { .. } = self.envelope {
            for (k, v) in self.envelope.cloudevents_attributes(m) {
                if k != "datacontenttype" {
                    f.push((format!("ce_{k}"), v.into_bytes()));
                }
            }
        }
        f.push(("payload".into(), body));
        Ok(f)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn forget_connection(&self) {
        *self.conn.lock().await = None;
    }
}

/// Turns an error the script caught into a result.
fn server_refusal(stream: &str, error: &str) -> PublishError {
    let code = error.split_whitespace().next().unwrap_or_default();
    let reason = match code {
        "WRONGTYPE" => {
            return permanent(format!(
                "key {stream:?} holds a value that is not a stream: {error}"
            ))
        }
        "NOPERM" => return permanent(format!("not allowed to append to {stream:?}: {error}")),
        _ => format!("Redis refused to append to {stream:?}: {error}"),
    };
    transient(reason, None)
}

#[async_trait]
impl Publisher for RedisStreamsPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let mut results: Vec<Option<Result<(), PublishError>>> =
            batch.iter().map(|_| None).collect();
        let ttl_ms = u64::try_from(self.dedupe_ttl.as_millis()).unwrap_or(u64::MAX);
        let max_len = self.max_len.unwrap_or(0);
        let mut pipe = ::redis::pipe();
        pipe.load_script(&self.script).ignore();
        let mut sent: Vec<usize> = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            let fields = match self.fields(m) {
                Ok(f) => f,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            let mut call = self.script.prepare_invoke();
            call.key(self.dedupe_key_for(m))
                .key(self.stream_for(m))
                .arg(ttl_ms)
                .arg(max_len);
            for (k, v) in &fields {
                call.arg(k).arg(v.as_slice());
            }
            pipe.invoke_script(&call);
            sent.push(i);
        }
        if !sent.is_empty() {
            let replies: Result<Vec<(i64, String)>, String> = match self.connection().await {
                Ok(mut conn) => {
                    match tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await {
                        Ok(Ok(r)) => Ok(r),
                        Ok(Err(e)) => {
                            if e.is_io_error()
                                || e.is_timeout()
                                || e.is_connection_dropped()
                                || e.is_unrecoverable_error()
                            {
                                self.forget_connection().await;
                            }
                            Err(format!("the pipeline to Redis failed: {e}"))
                        }
                        Err(_) => {
                            self.forget_connection().await;
                            Err(format!("no reply from Redis within {:?}", self.timeout))
                        }
                    }
                }
                Err(e) => Err(format!("cannot connect to Redis: {e}")),
            };
            match replies {
                Ok(replies) if replies.len() == sent.len() => {
                    for (&i, (status, text)) in sent.iter().zip(replies) {
                        results[i] = Some(match status {
                            // Appended, or already there (a duplicate).
                            1 | 0 => Ok(()),
                            _ => Err(server_refusal(&self.stream_for(&batch[i]), &text)),
                        });
                    }
                }
                Ok(replies) => {
                    let reason = format!(
                        "Redis answered {} replies for {} messages",
                        replies.len(),
                        sent.len()
                    );
                    for &i in &sent {
                        results[i] = Some(Err(transient(reason.clone(), None)));
                    }
                }
                Err(reason) => {
                    for &i in &sent {
                        results[i] = Some(Err(transient(reason.clone(), None)));
                    }
                }
            }
        }
        outcomes_or_retry(results)
    }
}
