//! Kafka publisher (feature `kafka`), documented on [`KafkaPublisher`].

use std::fmt;
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::failure::Failure;
use super::{Envelope, Publisher, CLOUDEVENTS_JSON};
use crate::error::{Error, PublishError, Result};
use crate::message::OutboxMessage;

/// Name of the header that always carries the message id.
pub const KAFKA_ID_HEADER: &str = "outbox-id";

const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes to Kafka (feature `kafka`) with librdkafka's idempotent
/// producer ([`FutureProducer`]).
///
/// ```no_run
/// # async fn demo(outbox: outbox::SqliteOutbox) -> outbox::Result<()> {
/// use outbox::publisher::{Envelope, KafkaPublisher};
/// use outbox::Relay;
///
/// let publisher = KafkaPublisher::builder("kafka-1:9092,kafka-2:9092")
///     .topic_prefix("prod.")
///     .envelope(Envelope::CloudEventsBinary {
///         source: "/recruiting/candidates".into(),
///     })
///     .build()?;
/// let relay = Relay::builder(outbox, publisher).spawn()?;
/// # relay.shutdown().await?;
/// # Ok(()) }
/// ```
///
/// # Mapping
///
/// | outbox | Kafka record |
/// |---|---|
/// | topic | topic, after the optional [prefix](KafkaPublisherBuilder::topic_prefix) |
/// | partition key | key (so one key always lands in one partition, in order); messages without a key use their id as key |
/// | payload | value, wrapped by the [`Envelope`] |
/// | id | header `outbox-id` in every envelope, plus `ce_id` in CloudEvents binary mode |
/// | metadata ([`Envelope::Plain`]) | header `content-type`, then the headers of [`Envelope::metadata`]: `outbox-id`, `outbox-event-type`, `outbox-schema-version`, `outbox-partition-key`, `outbox-position`, `outbox-created-at`, then the message's own headers |
/// | CloudEvents attributes ([`Envelope::CloudEventsBinary`]) | `ce_`-prefixed headers (`ce_id`, `ce_type`, ...); `datacontenttype` travels as the `content-type` header, as the CloudEvents Kafka binding says; then the message's own headers |
/// | [`Envelope::CloudEventsStructured`] | value is the CloudEvents JSON document, header `content-type: application/cloudevents+json`, `outbox-id`, then the message's own headers |
///
/// A message counts as published only when its **delivery report** says
/// the broker stored it (`acks=all`: every in-sync replica has it). All the
/// messages of a batch are handed to the producer first and their delivery
/// reports awaited afterwards, so a batch costs about one round trip. This
/// keeps per-key order because the relay never puts two messages of one key
/// into the same batch (this publisher does not claim
/// [`Publisher::keeps_key_order`]: a record that fails for good would not
/// stop the idempotent producer from storing the key's later records).
///
/// # Configuration the publisher enforces
///
/// | setting | value | why |
/// |---|---|---|
/// | `enable.idempotence` | `true` (always) | the producer's own retries never duplicate or reorder a record within a partition |
/// | `acks` | `all` (always) | success means the record survives the loss of the leader |
/// | `message.timeout.ms` | 5000 unless set (see [`delivery_timeout`](KafkaPublisherBuilder::delivery_timeout)) | an unreachable cluster fails the batch in time for the relay's lease; the relay then retries with backoff |
/// | `partitioner` | `murmur2_random` unless set | the same key → partition mapping as the Java client (Kafka Streams, Connect) |
/// | `client.id` | `outbox-relay` unless set | |
///
/// Kafka's idempotence covers the **producer's** retries of one send. It
/// does not cover the application sending the same message again: when the
/// relay re-sends a message (after a crash between publish and
/// acknowledgement, or after a failure the broker in fact recovered from),
/// Kafka stores a second record. Consumers deduplicate on the `outbox-id`
/// header (or `ce_id`), which is the same for every re-send.
///
/// # Error classification
///
/// By [`RDKafkaErrorCode`] of the failed send or delivery report:
///
/// | error | kind |
/// |---|---|
/// | message too large: `MessageSizeTooLarge`, `MessageBatchTooLarge`, `InvalidMessageSize` | permanent: the message is dead-lettered, the error names `message.max.bytes` |
/// | invalid topic name: `InvalidTopic` | permanent |
/// | not authorized: `TopicAuthorizationFailed`, `ClusterAuthorizationFailed`, `TransactionalIdAuthorizationFailed` | permanent |
/// | record refused as such: `InvalidRecord`, `PolicyViolation`, `InvalidTimestamp`, `UnsupportedForMessageFormat`, `InvalidRequiredAcks`, `InvalidArgument` | permanent |
/// | local queue full: `QueueFull` | transient |
/// | no delivery report in time: `MessageTimedOut` (brokers down or unreachable, leader elections, `NotEnoughReplicas` outlasting the producer's own retries, a topic that does not exist yet) | transient |
/// | fatal idempotent-producer error: `Fatal` (e.g. after `OutOfOrderSequenceNumber`) | transient; the producer is replaced by a new one for the next batch |
/// | anything else (`BrokerTransportFailure`, `AllBrokersDown`, `RequestTimedOut`, unknown broker errors, ...) | transient; the relay's `max_attempts` bounds the retries |
pub struct KafkaPublisher {
    config: ClientConfig,
    /// The producer and its generation, bumped each time a producer that
    /// hit a fatal error is replaced.
    producer: RwLock<(u64, FutureProducer)>,
    topic_prefix: String,
    envelope: Envelope,
}

/// Configures a [`KafkaPublisher`].
pub struct KafkaPublisherBuilder {
    config: ClientConfig,
    topic_prefix: String,
    envelope: Envelope,
    delivery_timeout: Option<Duration>,
}

impl KafkaPublisher {
    /// A publisher for the cluster at `bootstrap_servers`
    /// (`host:port[,host:port...]`) with the defaults of the module
    /// documentation.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) if librdkafka
    /// refuses the configuration.
    pub fn new(bootstrap_servers: impl Into<String>) -> Result<Self> {
        Self::builder(bootstrap_servers).build()
    }

    /// A builder for the cluster at `bootstrap_servers`.
    pub fn builder(bootstrap_servers: impl Into<String>) -> KafkaPublisherBuilder {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers.into());
        Self::builder_from_config(config)
    }

    /// A builder starting from your own librdkafka configuration (security
    /// protocol, SASL credentials, compression, linger, ...). The publisher
    /// still forces `enable.idempotence=true` and `acks=all`.
    pub fn builder_from_config(config: ClientConfig) -> KafkaPublisherBuilder {
        KafkaPublisherBuilder {
            config,
            topic_prefix: String::new(),
            envelope: Envelope::default(),
            delivery_timeout: None,
        }
    }

    /// The configuration the producer was created from, including the
    /// settings the publisher enforces.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The current producer (a cheap handle), for example to
    /// [`flush`](Producer::flush) it at shutdown or to read its
    /// statistics.
    pub fn producer(&self) -> FutureProducer {
        self.current().1
    }

    /// The Kafka topic a message goes to.
    pub fn topic_for(&self, message: &OutboxMessage) -> String {
        format!("{}{}", self.topic_prefix, message.topic())
    }

    fn current(&self) -> (u64, FutureProducer) {
        let guard = self
            .producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (guard.0, guard.1.clone())
    }

    /// Replaces a producer that hit a fatal error, unless another batch did
    /// so already.
    fn replace_producer(&self, generation: u64) {
        let mut guard = self
            .producer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.0 != generation {
            return;
        }
        let reason = guard.1.client().fatal_error();
        match self.config.create::<FutureProducer>() {
            Ok(p) => {
                tracing::warn!(
                    fatal = ?reason,
                    "outbox kafka publisher: producer hit a fatal error; replaced it"
                );
                *guard = (generation + 1, p);
            }
            Err(e) => tracing::error!(
                fatal = ?reason,
                error = %e,
                "outbox kafka publisher: producer hit a fatal error and could not be replaced"
            ),
        }
    }

    /// Hands one message to the producer; the future resolves with its
    /// delivery report.
    fn send(
        &self,
        producer: &FutureProducer,
        topic: &str,
        m: &OutboxMessage,
    ) -> std::result::Result<DeliveryFuture, KafkaError> {
        let (body, content_type) = self.envelope.body(m);
        let id = m.id().to_string();
        let key = m.partition_key().unwrap_or(&id);
        let mut headers = OwnedHeaders::new();
        let mut add = |k: &str, v: &str| {
            headers = std::mem::take(&mut headers).insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        };
        match &self.envelope {
            Envelope::CloudEventsBinary { .. } => {
                for (k, v) in self.envelope.cloudevents_attributes(m) {
                    if k == "datacontenttype" {
                        add("content-type", &v);
                    } else {
                        add(&format!("ce_{k}"), &v);
                    }
                }
                add(KAFKA_ID_HEADER, &id);
                for (k, v) in m.headers() {
                    add(k, v);
                }
            }
            Envelope::CloudEventsStructured { .. } => {
                add("content-type", CLOUDEVENTS_JSON);
                add(KAFKA_ID_HEADER, &id);
                for (k, v) in m.headers() {
                    add(k, v);
                }
            }
            Envelope::Plain => {
                add("content-type", &content_type);
                // Starts with `outbox-id`.
                for (k, v) in Envelope::metadata(m) {
                    add(&k, &v);
                }
            }
        }
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(&body)
            .headers(headers);
        producer.send_result(record).map_err(|(e, _)| e)
    }
}

impl fmt::Debug for KafkaPublisher {
    /// Shows the brokers, prefix and envelope only: the client
    /// configuration can hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("bootstrap_servers", &self.config.get("bootstrap.servers"))
            .field("topic_prefix", &self.topic_prefix)
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for KafkaPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisherBuilder")
            .field("bootstrap_servers", &self.config.get("bootstrap.servers"))
            .field("topic_prefix", &self.topic_prefix)
            .field("envelope", &self.envelope)
            .field("delivery_timeout", &self.delivery_timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisherBuilder {
    setters! {
        /// Prepended to every message's topic (default: none), e.g. `prod.`.
        pub fn topic_prefix(prefix: impl Into<String>) => topic_prefix = prefix.into();

        /// How messages are wrapped (default [`Envelope::Plain`]).
        pub fn envelope(envelope: Envelope) => envelope = envelope;

        /// How long the producer tries to deliver a message before reporting
        /// it failed (librdkafka's `message.timeout.ms`; default 5 s unless the
        /// configuration sets it). Keep it well below the relay's lease TTL:
        /// the relay waits for the whole batch's delivery reports.
        pub fn delivery_timeout(timeout: Duration) => delivery_timeout = Some(timeout);
    }

    /// Sets any librdkafka property (overrides the configuration given so
    /// far; `enable.idempotence` and `acks` are still forced).
    #[must_use]
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.set(key.into(), value.into());
        self
    }

    /// Creates the producer. Fails if the configuration is invalid; the
    /// brokers are contacted in the background, not here.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) if librdkafka
    /// refuses the configuration.
    pub fn build(self) -> Result<KafkaPublisher> {
        let mut config = self.config;
        let bad = |field: &'static str, reason: String| Error::InvalidConfig { field, reason };
        if config.get("bootstrap.servers").is_none_or(str::is_empty) {
            return Err(bad("bootstrap_servers", "must not be empty".into()));
        }
        config.set("enable.idempotence", "true");
        config.set("acks", "all");
        match self.delivery_timeout {
            Some(d) if d.is_zero() => {
                return Err(bad("delivery_timeout", "must be greater than zero".into()))
            }
            Some(d) => {
                config.remove("delivery.timeout.ms");
                config.set("message.timeout.ms", d.as_millis().to_string());
            }
            None => {
                if config.get("message.timeout.ms").is_none()
                    && config.get("delivery.timeout.ms").is_none()
                {
                    config.set(
                        "message.timeout.ms",
                        DEFAULT_DELIVERY_TIMEOUT.as_millis().to_string(),
                    );
                }
            }
        }
        if config.get("partitioner").is_none() {
            config.set("partitioner", "murmur2_random");
        }
        if config.get("client.id").is_none() {
            config.set("client.id", "outbox-relay");
        }
        let producer: FutureProducer = config
            .create()
            .map_err(|e| bad("kafka client configuration", e.to_string()))?;
        Ok(KafkaPublisher {
            config,
            producer: RwLock::new((0, producer)),
            topic_prefix: self.topic_prefix,
            envelope: self.envelope,
        })
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<std::result::Result<(), PublishError>> {
        let (generation, producer) = self.current();
        // Hand the whole batch to the producer first...
        let sent: Vec<_> = batch
            .iter()
            .map(|m| {
                let topic = self.topic_for(m);
                let r = self.send(&producer, &topic, m);
                (topic, r)
            })
            .collect();
        // ...then collect the delivery reports.
        let mut fatal = false;
        let mut out = Vec::with_capacity(batch.len());
        for (m, (topic, sent)) in batch.iter().zip(sent) {
            let result = match sent {
                Err(e) => Err(e),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                },
            };
            out.push(result.map_err(|e| {
                fatal |= e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal);
                classify(e, &topic, m)
            }));
        }
        if fatal {
            self.replace_producer(generation);
        }
        out
    }
}

/// Sorts a Kafka error into transient or permanent (see the module
/// documentation's table).
fn classify(e: KafkaError, topic: &str, m: &OutboxMessage) -> PublishError {
    use RDKafkaErrorCode as C;
    let code = e.rdkafka_error_code();
    let permanent = match code {
        Some(C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize) => {
            Some(format!(
                "message {} is too large for Kafka topic `{topic}` ({} payload bytes); raise \
             message.max.bytes on the producer and max.message.bytes on the topic, or shrink it",
                m.id(),
                m.payload().len()
            ))
        }
        Some(C::InvalidTopic) => Some(format!("`{topic}` is not a valid Kafka topic name")),
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed,
        ) => Some(format!(
            "not authorized to produce to Kafka topic `{topic}`"
        )),
        Some(
            C::InvalidRecord
            | C::PolicyViolation
            | C::InvalidTimestamp
            | C::UnsupportedForMessageFormat
            | C::InvalidRequiredAcks
            | C::InvalidArgument,
        ) => Some(format!(
            "Kafka rejected message {} for topic `{topic}`",
            m.id()
        )),
        _ => None,
    };
    if let Some(reason) = permanent {
        return PublishError::permanent(Failure::new(reason, e));
    }
    let reason = match code {
        Some(C::QueueFull) => "Kafka producer queue is full".to_owned(),
        Some(C::MessageTimedOut) => format!(
            "no delivery report from Kafka for topic `{topic}` within message.timeout.ms \
             (brokers unreachable or slow)"
        ),
        Some(C::Fatal) => {
            "the Kafka producer hit a fatal error; it is replaced before the next batch".to_owned()
        }
        _ if matches!(e, KafkaError::Canceled) => {
            "the Kafka producer closed before the delivery report".to_owned()
        }
        _ => format!("Kafka delivery to topic `{topic}` failed"),
    };
    PublishError::transient(Failure::new(reason, e))
}
