//! Publishers: where the relay sends committed messages.
//!
//! A [`Publisher`] receives a batch and returns one result per message, in
//! the same order. Unless the publisher says it keeps a key's order within a
//! batch ([`Publisher::keeps_key_order`]), the relay never puts two messages
//! with the same partition key in one batch, so a publisher may send a
//! batch's messages in parallel or pipelined without breaking per-key order.
//!
//! Built in: [`InMemoryPublisher`] (for tests), [`FnPublisher`] (a closure)
//! and [`LogPublisher`] (tracing or stdout).
//!
//! Behind features: `KafkaPublisher` (feature `kafka`: librdkafka's
//! idempotent producer) and `WebhookPublisher` (feature `http`: signed
//! HTTP `POST`s, with `verify_signature` for receivers).
//! Also `NatsPublisher` (feature `nats`: JetStream with `Nats-Msg-Id`
//! deduplication), `RabbitMqPublisher` (feature `amqp`: publisher confirms,
//! mandatory routing) and `RedisStreamsPublisher` (feature `redis`: `XADD`
//! behind an atomic deduplication guard, on a server or a Redis Cluster).

#[cfg(feature = "amqp")]
mod amqp;
mod closure;
mod envelope;
#[cfg(any(
    feature = "amqp",
    feature = "nats",
    feature = "redis",
    feature = "http",
    feature = "kafka"
))]
mod failure;
#[cfg(any(feature = "amqp", feature = "nats", feature = "redis"))]
mod hidden;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "kafka")]
mod kafka;
mod log;
mod memory;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;

use async_trait::async_trait;

#[cfg(feature = "amqp")]
pub use self::amqp::RabbitMqPublisher;
pub use self::closure::FnPublisher;
pub use self::envelope::{Envelope, CLOUDEVENTS_JSON};
#[cfg(feature = "http")]
pub use self::http::{
    signature_header, verify_signature, WebhookPublisher, WebhookPublisherBuilder,
    IDEMPOTENCY_KEY_HEADER, SIGNATURE_HEADER,
};
#[cfg(feature = "kafka")]
pub use self::kafka::{KafkaPublisher, KafkaPublisherBuilder, KAFKA_ID_HEADER};
pub use self::log::LogPublisher;
pub use self::memory::InMemoryPublisher;
#[cfg(feature = "nats")]
pub use self::nats::NatsPublisher;
#[cfg(feature = "redis")]
pub use self::redis::RedisStreamsPublisher;
use crate::error::PublishError;
use crate::message::OutboxMessage;

/// Sends committed messages to their destination.
///
/// Implementations must return exactly one result per message, in the order
/// of `batch`. A result of `Ok(())` means the destination has the message
/// durably; the relay then deletes (or archives) it. Pass
/// [`OutboxMessage::id`] to the destination as its idempotency key: after a
/// crash between publish and acknowledgement the relay sends the message
/// again.
///
/// A call the relay stops waiting for is abandoned: its messages are not
/// acknowledged and are published again later. That happens when the call
/// outlives the relay's lease on their keys (another relay may own them by
/// then) or the shutdown grace period
/// ([`RelayBuilder::shutdown_grace`](crate::RelayBuilder::shutdown_grace)).
/// The call's future is dropped at its next await.
///
/// Return errors rather than panic. A call that panics anyway fails all of
/// its messages transiently (they are retried) and the relay logs the
/// panic once through `tracing`; but the process's panic hook runs first,
/// and the default hook prints every panic to stderr. The crate does not
/// replace the hook, which is process-wide and the application's to set.
///
/// ```
/// use async_trait::async_trait;
/// use outbox::{OutboxMessage, PublishError, Publisher};
///
/// #[derive(Debug)]
/// struct Stdout;
///
/// #[async_trait]
/// impl Publisher for Stdout {
///     async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
///         batch
///             .iter()
///             .map(|m| {
///                 println!("{} {}", m.topic(), m.id());
///                 Ok(())
///             })
///             .collect()
///     }
/// }
/// ```
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes a batch; one result per message, in order.
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>>;

    /// Whether a batch may hold several messages of one partition key.
    ///
    /// `false` (the default): every batch holds at most one message per
    /// key, and the relay waits for a key's message before it sends the
    /// next. One busy key then drains at one message per publisher call.
    ///
    /// `true`: the relay passes a key's pending messages together, as a run
    /// in position order, and the publisher promises, for each key:
    /// - it makes a message durable at the destination only after every
    ///   earlier message of the key in the batch is (sent one after the
    ///   other, or pipelined to a destination that keeps them in order and
    ///   drops the later ones when an earlier one fails);
    /// - after a message of the key fails, it sends none of the key's later
    ///   messages in this call and reports each of them as an error (for
    ///   instance [`PublishError::transient`]).
    ///
    /// The relay acknowledges nothing of a key after its first failure in
    /// a call: those messages stay pending and go out behind the failed
    /// one, whatever their results said. A success reported after an
    /// earlier failure of its key breaks the promise (the destination may
    /// hold the later message before the earlier one); the relay logs it
    /// as an error and sends the message again in order.
    ///
    /// Built in: [`InMemoryPublisher`], [`FnPublisher`] and
    /// [`LogPublisher`] keep the order; so does `NatsPublisher` (a key's
    /// messages one after the other, keys pipelined).
    fn keeps_key_order(&self) -> bool {
        false
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for std::sync::Arc<P> {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        (**self).publish(batch).await
    }

    fn keeps_key_order(&self) -> bool {
        (**self).keeps_key_order()
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for Box<P> {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        (**self).publish(batch).await
    }

    fn keeps_key_order(&self) -> bool {
        (**self).keeps_key_order()
    }
}

/// The keys whose message failed in a publisher call, for publishers that
/// keep a key's order within a batch ([`Publisher::keeps_key_order`]): a
/// key's later messages in the call are not sent once one of its messages
/// failed.
#[derive(Debug, Default)]
pub(crate) struct FailedKeys<'a>(std::collections::HashSet<&'a str>);

impl<'a> FailedKeys<'a> {
    /// The error to report instead of sending `m`, if an earlier message of
    /// its key failed in this call.
    pub(crate) fn held_back(&self, m: &OutboxMessage) -> Option<PublishError> {
        let key = m.partition_key()?;
        self.0.contains(key).then(|| {
            PublishError::transient(format!(
                "not sent: an earlier message of key {key:?} failed in the same call"
            ))
        })
    }

    /// Notes the outcome of sending `m`.
    pub(crate) fn note(&mut self, m: &'a OutboxMessage, result: &Result<(), PublishError>) {
        if let (Err(_), Some(key)) = (result, m.partition_key()) {
            self.0.insert(key);
        }
    }
}

// The relay holds `Arc<dyn Publisher>`: this fails to compile if the trait
// stops being object safe.
fn _object_safe(_: &dyn Publisher) {}
