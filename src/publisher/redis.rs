//! A publisher for Redis Streams (feature `redis`):
//! [`RedisStreamsPublisher`], whose documentation holds the mapping table,
//! the deduplication guard and the error classification.

use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::cluster::{ClusterClient, ClusterConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::Slot;
use ::redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, Pipeline, RedisError, Script,
    ScriptInvocation, Value,
};
use async_trait::async_trait;
use futures_util::future::join_all;

use super::failure::{outcomes_or_retry, permanent, transient, BoxError};
use super::hidden::Hidden;
use super::{Envelope, Publisher};
use crate::error::{Error, PublishError};
use crate::message::OutboxMessage;

const DEFAULT_DEDUPE_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many messages one script call carries at most: enough to spread
/// the call's own cost thin, few enough that the server, which runs a
/// script to its end before anything else, is never held for long (about
/// a millisecond, at 8 to 12 µs a message on a busy two-core machine).
const MESSAGES_PER_CALL: usize = 100;

/// For each message in turn, looks its dedupe key up and, if absent,
/// appends the message to its stream and sets the key to the new entry's
/// id, in one atomic step.
///
/// KEYS: per message, its dedupe key then its stream. ARGV[1] TTL in ms,
/// ARGV[2] MAXLEN (0 = no trimming), ARGV[3] `1` to rewrite the dedupe key
/// of a duplicate (see [`RedisStreamsPublisher::with_replica_acks`]); then
/// per message the number of its field/value arguments and those
/// arguments. Answers one reply per message, in order: `{1, entry id}`
/// (appended), `{0, entry id of the first copy}` (duplicate) or `{-1,
/// error}` (nothing written for it). A message's failure does not stop
/// the next: each stands alone, as the relay never puts two messages of
/// one key in a batch for this publisher. Nothing is written before the
/// append succeeds, so a refused append leaves no guard that would make
/// its retry look like a duplicate; a guard that cannot be written after
/// the append (an ACL that denies `SET`) leaves the entry appended and
/// unguarded, and the message counts as appended.
const DEDUPE_XADD: &str = r#"
local ttl, maxlen, touch = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local replies = {}
local a = 4
for m = 1, #KEYS / 2 do
  local dedupe, stream = KEYS[2 * m - 1], KEYS[2 * m]
  local n = tonumber(ARGV[a])
  local fields = a + 1
  a = fields + n
  local first = redis.pcall('GET', dedupe)
  if type(first) == 'table' and first.err then
    replies[m] = {-1, first.err}
  elseif first then
    if touch == '1' then
      redis.pcall('SET', dedupe, first, 'XX', 'KEEPTTL')
    end
    replies[m] = {0, first}
  else
    local id
    if maxlen and maxlen > 0 then
      id = redis.pcall('XADD', stream, 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, fields, a - 1))
    else
      id = redis.pcall('XADD', stream, '*', unpack(ARGV, fields, a - 1))
    end
    if type(id) == 'table' and id.err then
      replies[m] = {-1, id.err}
    else
      redis.pcall('SET', dedupe, id, 'PX', ttl)
      replies[m] = {1, id}
    end
  end
end
return replies
"#;

/// Appends messages to Redis Streams with an atomic deduplication guard
/// (feature `redis`), on a standalone server or a Redis Cluster.
///
/// # Mapping
///
/// Each message becomes one stream entry (`XADD <stream> [MAXLEN ~ n] *
/// field value ...`):
///
/// | outbox | Redis |
/// |---|---|
/// | topic | stream key `<stream prefix><topic>` (prefix empty by default; on a cluster `<stream prefix>{<topic>}`, see [Redis Cluster](#redis-cluster)) |
/// | id | field `id`, and the dedupe key `<dedupe prefix><id>` (default prefix `outbox:dedupe:`; on a cluster `<dedupe prefix>{<topic>}:<id>`) |
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
/// that runs atomically on the server: `GET <dedupe key>`, and only if the
/// key is absent `XADD`, then `SET <dedupe key> <entry id> PX <ttl>`; the
/// dedupe key holds the new entry's id. A second copy of a message (a
/// retry after a lost reply, a relay crash) finds the key, appends nothing
/// and counts as published. If `XADD` fails, nothing was written, so the
/// retry is not mistaken for a duplicate. The guard lasts the
/// [dedupe TTL](Self::with_dedupe_ttl) (default 24 hours): a copy that
/// arrives later is appended again (consumers can still deduplicate on
/// the `id` field). A message's two keys, and those of every message the
/// same script call carries, must live in one hash slot: see [Redis
/// Cluster](#redis-cluster).
///
/// # Pipelining
///
/// A batch is sent in one round trip: `SCRIPT LOAD` followed by one
/// `EVALSHA` per hundred messages (and a `WAIT` if [replica
/// acknowledgements](Self::with_replica_acks) are asked for), pipelined.
/// Each call runs the guard for its messages one after the other and
/// answers each message's own result: a message the server refuses
/// (`WRONGTYPE`, `OOM`, ...) does not fail the others. An error that stops
/// a call or the pipeline (`LOADING`, `CLUSTERDOWN`, a lost connection)
/// fails every message of the pipeline transiently; their retry finds the
/// guards of those already appended. A call holds the server for about a
/// millisecond at most (Redis runs a script to its end before any other
/// command). On a cluster, one such pipeline per hash slot of the batch,
/// sent concurrently, a call per hundred messages of the slot.
///
/// # Connection
///
/// One multiplexed connection (on a cluster, one connection manager that
/// holds a connection to each node and follows the slot map), opened
/// lazily on the first batch and reopened on the batch after a connection
/// error.
///
/// # Redis Cluster
///
/// [`cluster`](Self::cluster) (or [`new_cluster`](Self::new_cluster) over a
/// [`ClusterClient`] of your own) publishes to a Redis Cluster. A script
/// there may only touch keys of one hash slot, so both keys of a message
/// carry its topic as their **hash tag**, the part of a key between the
/// first `{` and the next `}`, which alone decides its slot:
///
/// | key | standalone | cluster |
/// |---|---|---|
/// | stream | `<stream prefix><topic>` | `<stream prefix>{<topic>}` |
/// | dedupe key | `<dedupe prefix><id>` | `<dedupe prefix>{<topic>}:<id>` |
///
/// With the default prefixes, topic `orders` is appended to the stream
/// `{orders}` under the dedupe keys `outbox:dedupe:{orders}:<id>`.
/// Consumers read the stream under that name; the dedupe keys of a topic
/// take their memory on the shard that holds its stream. A script call
/// carries only messages whose keys share one slot.
///
/// Neither prefix may hold `{` or `}`: a brace there would put the hash tag
/// in the prefix, and the two keys of a message could land in different
/// slots. [`validate`](Self::validate) reports such a prefix as an
/// [`Error::InvalidConfig`]; every batch checks the same and fails
/// transiently with that error as its cause (the messages wait, nothing is
/// dead-lettered at once). A topic that starts with `}` leaves the tag
/// empty, so Redis would hash each key whole: such a message fails
/// permanently.
///
/// The client follows `MOVED` and `ASK` redirections and the slot map
/// through a failover; when it sends a pipeline again, the guard makes
/// the repeated scripts harmless (they find their keys and append
/// nothing).
///
/// **What a failover can lose.** A master answers the script before its
/// replicas have its effects (Redis replicates asynchronously). If the
/// master dies in that moment, the replica promoted in its place has
/// neither the entry nor its dedupe key: a message the publisher confirmed,
/// and the relay deleted, is gone. By default the publisher has that
/// window, as any write to Redis without `WAIT` has.
/// [`with_replica_acks`](Self::with_replica_acks) closes it: a batch is confirmed only once `WAIT` reports that many
/// replicas have its writes, so a confirmed message is lost only if every
/// replica that acknowledged it is lost too or a replica that did not is
/// promoted (ask for as many acknowledgements as each master has replicas).
/// A failover adds no duplicates: the entry and its dedupe key reach a
/// replica together (the script's effects replicate as one transaction),
/// so a message sent again after a failover finds its key wherever its
/// entry survived. Writes to the lost master's slots fail until its replica
/// is promoted (the cluster's node timeout and an election, seconds); the
/// relay retries them, so give it a retry policy that outlasts a failover.
///
/// # Errors
///
/// | failure | kind |
/// |---|---|
/// | cannot connect, connection lost, no reply within the [timeout](Self::with_timeout) | transient (reconnects on the next batch) |
/// | the server refuses the write (`OOM`, `READONLY` replica, `LOADING`, `CLUSTERDOWN`, ...) | transient |
/// | fewer replicas acknowledged than [asked for](Self::with_replica_acks) | transient |
/// | on a cluster, a prefix with a brace (see above) | transient, with an [`Error::InvalidConfig`] as its cause |
/// | payload larger than the [configured maximum](Self::with_max_payload) | permanent |
/// | the stream key holds another type (`WRONGTYPE`), or ACLs forbid the commands (`NOPERM`) | permanent |
/// | on a cluster, a topic that starts with `}` | permanent |
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
///
/// On a cluster, with each batch confirmed only once the master's replica
/// has it:
///
/// ```no_run
/// # async fn demo(outbox: impl outbox::Store) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// use outbox::publisher::RedisStreamsPublisher;
/// use outbox::Relay;
///
/// let publisher = RedisStreamsPublisher::cluster([
///     "redis://redis-1:6379",
///     "redis://redis-2:6379",
///     "redis://redis-3:6379",
/// ])?
/// .with_stream_prefix("events:") // topic `orders`: stream `events:{orders}`
/// .with_replica_acks(1, Duration::from_secs(1));
/// publisher.validate()?;
/// let relay = Relay::builder(outbox, publisher).spawn()?;
/// # relay.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisStreamsPublisher {
    target: Target,
    script: Hidden<Script>,
    stream_prefix: String,
    dedupe_prefix: String,
    dedupe_ttl: Duration,
    max_len: Option<u64>,
    max_payload: Option<usize>,
    replica_acks: Option<(u32, Duration)>,
    timeout: Duration,
    envelope: Envelope,
    conn: Hidden<tokio::sync::Mutex<Option<Connection>>>,
}

/// Where the publisher writes. Hidden: the connection info may hold a
/// password.
#[derive(Debug)]
enum Target {
    Server(Hidden<Client>),
    Cluster(Hidden<Box<ClusterClient>>),
}

/// An open connection to the [`Target`].
#[derive(Clone)]
enum Connection {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Connection {
    async fn query(&mut self, pipe: &Pipeline) -> Result<Vec<Value>, RedisError> {
        match self {
            Connection::Server(c) => pipe.query_async(c).await,
            Connection::Cluster(c) => pipe.query_async(c).await,
        }
    }
}

/// The messages of a batch that go to one hash slot (all of them on a
/// standalone server), in one pipeline.
struct Group<'s> {
    slot: Option<Slot>,
    /// Indexes into the batch: one list per script call, in the order of
    /// the pipeline's calls.
    calls: Vec<Vec<usize>>,
    /// The call being filled, not yet in `pipe`.
    open: Option<ScriptInvocation<'s>>,
    pipe: Pipeline,
}

impl Group<'_> {
    fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.calls.iter().flatten().copied()
    }

    /// Moves the call being filled into the pipeline.
    fn close(&mut self) {
        if let Some(call) = self.open.take() {
            self.pipe.invoke_script(&call);
        }
    }
}

/// Why a group's pipeline brought no replies.
struct Unanswered {
    reason: String,
    source: Option<RedisError>,
    /// The connection is broken: open another for the next batch.
    reconnect: bool,
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
        Self::on(Target::Server(Hidden(client)))
    }

    /// A publisher for the Redis Cluster that `nodes` belong to (URLs as
    /// for [`from_url`](Self::from_url); any one that answers is enough,
    /// the others are found from it). Keys are named as in [Redis
    /// Cluster](#redis-cluster). Only parses the URLs; the connection opens
    /// on the first batch.
    ///
    /// # Errors
    ///
    /// The client's [`RedisError`] if a URL cannot be parsed or the nodes'
    /// credentials differ.
    pub fn cluster<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self, RedisError> {
        Ok(Self::new_cluster(ClusterClient::new(nodes)?))
    }

    /// A publisher on an existing cluster client (for TLS, credentials,
    /// retries or read routing of your own). Keys are named as in [Redis
    /// Cluster](#redis-cluster).
    pub fn new_cluster(client: ClusterClient) -> Self {
        Self::on(Target::Cluster(Hidden(Box::new(client))))
    }

    fn on(target: Target) -> Self {
        Self {
            target,
            script: Hidden(Script::new(DEDUPE_XADD)),
            stream_prefix: String::new(),
            dedupe_prefix: "outbox:dedupe:".to_owned(),
            dedupe_ttl: DEFAULT_DEDUPE_TTL,
            max_len: None,
            max_payload: None,
            replica_acks: None,
            timeout: DEFAULT_TIMEOUT,
            envelope: Envelope::Plain,
            conn: Hidden(tokio::sync::Mutex::new(None)),
        }
    }

    setters! {
        /// Prepends `prefix` to every topic to form the stream key (default
        /// empty). On a cluster it must not hold `{` or `}`.
        pub fn with_stream_prefix(prefix: impl Into<String>) => stream_prefix = prefix.into();

        /// Prefix of the dedupe keys (default `outbox:dedupe:`). On a
        /// cluster it must not hold `{` or `}`.
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

    /// Confirms a batch only once `replicas` replicas acknowledge its
    /// writes, waiting up to `within` (at least 1 ms; keep it below the
    /// [timeout](Self::with_timeout)) with `WAIT` after the batch's scripts.
    /// Fewer acknowledgements fail the batch transiently; its writes stay
    /// on the master, and the retry finds them. Off by default (`0`).
    ///
    /// This closes the window in which a failover loses a message the
    /// master had confirmed (see [Redis Cluster](#redis-cluster)); it also
    /// serves a standalone primary with replicas. While a master has fewer
    /// replicas in sync than asked for (after a failover, until the lost
    /// node is back as a replica), its writes are not confirmed and the
    /// relay retries them. With acknowledgements on, the script rewrites
    /// the dedupe key of a duplicate (same value, same expiry), so that
    /// `WAIT` on a new connection also covers the first copy's write.
    #[must_use]
    pub fn with_replica_acks(mut self, replicas: u32, within: Duration) -> Self {
        self.replica_acks =
            (replicas > 0).then_some((replicas, within.max(Duration::from_millis(1))));
        self
    }

    /// Checks what a cluster would refuse before the relay starts: on a
    /// cluster, that neither prefix holds `{` or `}` (see [Redis
    /// Cluster](#redis-cluster)). Always `Ok` on a standalone server.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the prefix (`stream_prefix` or
    /// `dedupe_prefix`) and why.
    pub fn validate(&self) -> Result<(), Error> {
        if let Target::Server(_) = self.target {
            return Ok(());
        }
        for (field, prefix) in [
            ("stream_prefix", &self.stream_prefix),
            ("dedupe_prefix", &self.dedupe_prefix),
        ] {
            if prefix.contains(['{', '}']) {
                return Err(Error::InvalidConfig {
                    field,
                    reason: format!(
                        "{prefix:?} holds a brace: on Redis Cluster the publisher makes the \
                         topic the keys' hash tag (`{{<topic>}}`), and a brace in a prefix \
                         would move it, so that a message's stream and dedupe key could land \
                         in different hash slots"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The stream key a message is appended to: `<stream prefix><topic>`,
    /// on a cluster `<stream prefix>{<topic>}`.
    pub fn stream_for(&self, message: &OutboxMessage) -> String {
        match self.target {
            Target::Server(_) => format!("{}{}", self.stream_prefix, message.topic()),
            Target::Cluster(_) => format!("{}{{{}}}", self.stream_prefix, message.topic()),
        }
    }

    /// The key that guards a message against a second append:
    /// `<dedupe prefix><id>`, on a cluster `<dedupe prefix>{<topic>}:<id>`.
    pub fn dedupe_key_for(&self, message: &OutboxMessage) -> String {
        match self.target {
            Target::Server(_) => format!("{}{}", self.dedupe_prefix, message.id()),
            Target::Cluster(_) => format!(
                "{}{{{}}}:{}",
                self.dedupe_prefix,
                message.topic(),
                message.id()
            ),
        }
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

    async fn connection(&self) -> Result<Connection, RedisError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = match &self.target {
            Target::Server(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                Connection::Server(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Target::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout);
                Connection::Cluster(client.get_async_connection_with_config(config).await?)
            }
        };
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn forget_connection(&self) {
        *self.conn.lock().await = None;
    }

    /// Where a message's script must run, or why it cannot: `None` on a
    /// standalone server, its keys' hash slot on a cluster.
    fn slot_for(&self, stream: &str, dedupe: &str) -> Result<Option<Slot>, PublishError> {
        if let Target::Server(_) = self.target {
            return Ok(None);
        }
        if let Err(e) = self.validate() {
            return Err(transient(
                "the Redis publisher's configuration breaks hash-slot co-location".to_owned(),
                Some(Box::new(e)),
            ));
        }
        let slot = Slot::for_key(stream);
        if slot != Slot::for_key(dedupe) {
            return Err(permanent(format!(
                "stream {stream:?} and dedupe key {dedupe:?} hash to different Redis Cluster \
                 slots (a topic that starts with `}}` leaves the hash tag empty)"
            )));
        }
        Ok(Some(slot))
    }

    /// Runs one group's pipeline: the scripts' replies, then `WAIT`'s if
    /// replica acknowledgements are asked for.
    async fn run(
        &self,
        conn: Result<Connection, RedisError>,
        pipe: &Pipeline,
    ) -> Result<Vec<Value>, Unanswered> {
        let mut conn = conn.map_err(|e| Unanswered {
            reason: "cannot connect to Redis".to_owned(),
            source: Some(e),
            reconnect: false,
        })?;
        match tokio::time::timeout(self.timeout, conn.query(pipe)).await {
            Ok(Ok(replies)) => Ok(replies),
            Ok(Err(e)) => Err(Unanswered {
                reason: "the pipeline to Redis failed".to_owned(),
                reconnect: e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error(),
                source: Some(e),
            }),
            Err(_) => Err(Unanswered {
                reason: format!("no reply from Redis within {:?}", self.timeout),
                source: None,
                reconnect: true,
            }),
        }
    }

    /// Records the outcome of each message of `group` from its replies.
    fn record(
        &self,
        batch: &[OutboxMessage],
        group: &Group<'_>,
        replies: Result<Vec<Value>, Unanswered>,
        results: &mut [Option<Result<(), PublishError>>],
    ) {
        let fail = |results: &mut [Option<Result<(), PublishError>>],
                    members: &mut dyn Iterator<Item = usize>,
                    reason: &str,
                    source: Option<&RedisError>| {
            for i in members {
                let source = source.map(|e| Box::new(e.clone()) as BoxError);
                results[i] = Some(Err(transient(reason.to_owned(), source)));
            }
        };
        let mut replies = match replies {
            Ok(r) => r,
            Err(u) => return fail(results, &mut group.members(), &u.reason, u.source.as_ref()),
        };
        let expected = group.calls.len() + usize::from(self.replica_acks.is_some());
        if replies.len() != expected {
            let reason = format!(
                "Redis answered {} replies for {} script calls",
                replies.len(),
                group.calls.len()
            );
            return fail(results, &mut group.members(), &reason, None);
        }
        // Checked before the scripts' own outcomes: a script that appended
        // is not confirmed until its replicas have it.
        let unacknowledged = self.replica_acks.and_then(|(wanted, within)| {
            let acked = ::redis::from_redis_value::<u64>(replies.pop().unwrap_or(Value::Nil));
            match acked {
                Ok(n) if n >= u64::from(wanted) => None,
                Ok(n) => Some(format!(
                    "{n} of the {wanted} replicas asked for acknowledged the writes within {within:?}"
                )),
                Err(e) => Some(format!("WAIT answered something else than a count: {e}")),
            }
        });
        for (members, reply) in group.calls.iter().zip(replies) {
            let outcomes = match ::redis::from_redis_value::<Vec<(i64, String)>>(reply) {
                Ok(o) if o.len() == members.len() => o,
                Ok(o) => {
                    let reason = format!(
                        "the deduplicating script answered {} outcomes for {} messages",
                        o.len(),
                        members.len()
                    );
                    fail(results, &mut members.iter().copied(), &reason, None);
                    continue;
                }
                Err(e) => {
                    let reason =
                        format!("the deduplicating script answered something unexpected: {e}");
                    fail(results, &mut members.iter().copied(), &reason, None);
                    continue;
                }
            };
            for (&i, (code, detail)) in members.iter().zip(outcomes) {
                results[i] = Some(match code {
                    -1 => Err(server_refusal(&self.stream_for(&batch[i]), &detail)),
                    // Appended, or already there (a duplicate).
                    _ => match &unacknowledged {
                        None => Ok(()),
                        Some(reason) => Err(transient(reason.clone(), None)),
                    },
                });
            }
        }
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
        let touch = if self.replica_acks.is_some() {
            "1"
        } else {
            "0"
        };
        let mut groups: Vec<Group<'_>> = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            let (stream, dedupe) = (self.stream_for(m), self.dedupe_key_for(m));
            let prepared = self
                .fields(m)
                .and_then(|f| self.slot_for(&stream, &dedupe).map(|slot| (f, slot)));
            let (fields, slot) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            let group = match groups.iter().position(|g| g.slot == slot) {
                Some(g) => &mut groups[g],
                None => {
                    let mut pipe = ::redis::pipe();
                    // On whichever node the pipeline lands, even one just
                    // promoted: the script cache is not replicated.
                    pipe.load_script(&self.script).ignore();
                    groups.push(Group {
                        slot,
                        calls: Vec::new(),
                        open: None,
                        pipe,
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            let call = group.open.get_or_insert_with(|| {
                let mut call = self.script.prepare_invoke();
                call.arg(ttl_ms).arg(max_len).arg(touch);
                group.calls.push(Vec::new());
                call
            });
            call.key(dedupe).key(stream).arg(fields.len() * 2);
            for (k, v) in &fields {
                call.arg(k).arg(v.as_slice());
            }
            let members = group.calls.last_mut().expect("opened with the call");
            members.push(i);
            if members.len() == MESSAGES_PER_CALL {
                group.close();
            }
        }
        for g in &mut groups {
            g.close();
        }
        if groups.is_empty() {
            return outcomes_or_retry(results);
        }
        if let Some((replicas, within)) = self.replica_acks {
            let ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
            for g in &mut groups {
                g.pipe.cmd("WAIT").arg(replicas).arg(ms);
            }
        }
        let conn = self.connection().await;
        // One pipeline per slot, all at once; a connection error is each
        // group's to report.
        let replies: Vec<Result<Vec<Value>, Unanswered>> = {
            let runs = groups.iter().map(|g| self.run(conn.clone(), &g.pipe));
            join_all(runs).await
        };
        let mut reconnect = false;
        for (group, replies) in groups.iter().zip(replies) {
            reconnect |= replies.as_ref().is_err_and(|u| u.reconnect);
            self.record(batch, group, replies, &mut results);
        }
        if reconnect {
            self.forget_connection().await;
        }
        outcomes_or_retry(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageId;

    fn message(topic: &str) -> OutboxMessage {
        OutboxMessage {
            seq: 1,
            id: MessageId::new(),
            topic: topic.into(),
            partition_key: None,
            event_type: "CandidateHired".into(),
            schema_version: 1,
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            headers: Default::default(),
            created_at: chrono::Utc::now(),
            attempt: 1,
            key_sequence: None,
        }
    }

    fn cluster() -> RedisStreamsPublisher {
        RedisStreamsPublisher::cluster(["redis://127.0.0.1:7101"]).unwrap()
    }

    #[test]
    fn keys_are_named_as_documented() {
        let m = message("orders");
        let id = m.id();
        let standalone = RedisStreamsPublisher::from_url("redis://127.0.0.1:6379")
            .unwrap()
            .with_stream_prefix("events:");
        assert_eq!(standalone.stream_for(&m), "events:orders");
        assert_eq!(standalone.dedupe_key_for(&m), format!("outbox:dedupe:{id}"));
        let cluster = cluster().with_stream_prefix("events:");
        assert_eq!(cluster.stream_for(&m), "events:{orders}");
        assert_eq!(
            cluster.dedupe_key_for(&m),
            format!("outbox:dedupe:{{orders}}:{id}")
        );
    }

    #[test]
    fn on_a_cluster_both_keys_of_a_message_share_its_topics_slot() {
        let p = cluster();
        for topic in ["orders", "a}b", "{x}", "with spaces", "é"] {
            let m = message(topic);
            let slot = p
                .slot_for(&p.stream_for(&m), &p.dedupe_key_for(&m))
                .unwrap_or_else(|e| panic!("{topic}: {e:?}"));
            assert_eq!(slot, Some(Slot::for_key(format!("{{{topic}}}"))), "{topic}");
        }
        let m = message("}odd");
        let e = p
            .slot_for(&p.stream_for(&m), &p.dedupe_key_for(&m))
            .unwrap_err();
        assert!(!e.is_transient());
    }

    #[test]
    fn a_prefix_with_a_brace_is_refused_on_a_cluster_only() {
        for (p, field) in [
            (cluster().with_stream_prefix("{tenant}:"), "stream_prefix"),
            (cluster().with_dedupe_prefix("dedupe}:"), "dedupe_prefix"),
        ] {
            match p.validate() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected InvalidConfig, got {other:?}"),
            }
            let m = message("orders");
            let e = p
                .slot_for(&p.stream_for(&m), &p.dedupe_key_for(&m))
                .unwrap_err();
            assert!(
                e.is_transient(),
                "the messages wait for a corrected publisher"
            );
        }
        let standalone = RedisStreamsPublisher::from_url("redis://127.0.0.1:6379")
            .unwrap()
            .with_stream_prefix("{tenant}:");
        standalone.validate().unwrap();
    }
}
