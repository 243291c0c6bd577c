//! A publisher for RabbitMQ and other AMQP 0-9-1 brokers (feature `amqp`):
//! [`RabbitMqPublisher`], whose documentation holds the mapping table and
//! the error classification.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use tokio::time::Instant;

use super::envelope::CePrefix;
use super::failure::{outcomes_or_retry, permanent, transient};
use super::hidden::Hidden;
use super::{Envelope, Publisher};
use crate::error::PublishError;
use crate::message::OutboxMessage;

/// Longest AMQP short string (routing key, property values, header names).
const MAX_SHORT_STRING: usize = 255;
const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes to a RabbitMQ exchange with publisher confirms (feature
/// `amqp`).
///
/// Every message is published `mandatory` and persistent on a channel in
/// confirm mode; a message counts as published only once the broker
/// confirmed it (for a persistent message routed to durable queues, once
/// it is written to disk, or to a quorum of replicas). The exchange, the
/// queues and their bindings are not declared here: declare them with
/// your usual tooling.
///
/// # Mapping
///
/// | outbox | AMQP |
/// |---|---|
/// | topic | routing key (or the partition key, see [`route_by_partition_key`](Self::route_by_partition_key)), on the exchange given at construction |
/// | id | property `message_id`. **AMQP brokers do not deduplicate**: after a retry (a lost confirm, a relay crash) a queue can hold two copies with the same `message_id`; consumers deduplicate on it |
/// | payload | message body ([`Envelope::body`]) |
/// | content type | property `content_type` (`application/cloudevents+json` in structured CloudEvents mode) |
/// | event type | property `type` |
/// | created at | property `timestamp` (seconds since the epoch) |
/// | — | property `delivery_mode` = 2 (persistent) |
/// | metadata, [`Envelope::Plain`] | headers `outbox-id`, `outbox-event-type`, `outbox-schema-version`, `outbox-partition-key` (if any), `outbox-position`, `outbox-created-at` ([`Envelope::metadata`]), as long strings |
/// | metadata, [`Envelope::CloudEventsBinary`] | headers `cloudEvents:specversion`, `cloudEvents:id`, `cloudEvents:source`, `cloudEvents:type`, `cloudEvents:time`, `cloudEvents:subject`, `cloudEvents:schemaversion`, `cloudEvents:sequence` (AMQP protocol binding; `datacontenttype` is `content_type`) |
/// | metadata, [`Envelope::CloudEventsStructured`] | inside the JSON body |
/// | the message's own headers | headers of the same name, in every mode |
///
/// Messages of one partition key go out in commit order (the relay never
/// sends two of them in one batch); a queue keeps that order as long as it
/// has a single consumer.
///
/// # Connection
///
/// The publisher holds one connection and one confirm-mode channel and
/// opens them lazily: on the first batch, and again on the batch after a
/// connection or channel was lost. Batches are published one at a time
/// (a second concurrent call waits): every message of a batch is sent,
/// then all confirms are awaited.
///
/// # Errors
///
/// | failure | kind |
/// |---|---|
/// | cannot connect, connection or channel lost, no confirm within the [confirm timeout](Self::with_confirm_timeout) | transient (reconnects on the next batch) |
/// | broker `nack` (queue full with `reject-publish`, internal error) | transient |
/// | the exchange does not exist (the broker closes the channel with 404) | transient: the whole publisher is misconfigured and dead-lettering every message would not help; declare the exchange and the messages flow (the retry policy still dead-letters them after `max_attempts`) |
/// | the exchange name is over 255 bytes (no broker can hold such an exchange) | transient, for the same reason |
/// | message returned as unroutable (`mandatory`: no queue bound for its routing key) | permanent (`no queue bound for routing key ...`) |
/// | routing key, event type or content type over 255 bytes, header name over 255 bytes | permanent (AMQP short-string limit) |
///
/// An exchange with an alternate exchange never returns messages: they go
/// to the alternate exchange and count as published.
///
/// # Example
///
/// ```no_run
/// # async fn demo(outbox: impl outbox::Store) -> Result<(), Box<dyn std::error::Error>> {
/// use outbox::publisher::RabbitMqPublisher;
/// use outbox::Relay;
///
/// let publisher = RabbitMqPublisher::new("amqp://127.0.0.1:5672/%2f", "recruiting");
/// let relay = Relay::builder(outbox, publisher).spawn()?;
/// # relay.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RabbitMqPublisher {
    /// Where to reconnect; `None` for a publisher built on a connection.
    /// Hidden: it may hold a password.
    uri: Hidden<Option<String>>,
    exchange: String,
    by_partition_key: bool,
    envelope: Envelope,
    confirm_timeout: Duration,
    connect_timeout: Duration,
    state: Hidden<tokio::sync::Mutex<Link>>,
}

#[derive(Default)]
struct Link {
    conn: Option<Connection>,
    channel: Option<Channel>,
}

impl RabbitMqPublisher {
    /// A publisher to `exchange` on the broker at `uri` (for example
    /// `amqp://user:password@127.0.0.1:5672/%2f`). Nothing is connected
    /// yet: the connection opens on the first batch, and reopens after a
    /// loss. Use [`connect`](Self::connect) to fail at start-up instead.
    pub fn new(uri: impl Into<String>, exchange: impl Into<String>) -> Self {
        Self::with_link(Some(uri.into()), exchange.into(), Link::default())
    }

    /// Like [`new`](Self::new), but connects (and opens the confirm-mode
    /// channel) now, so that a wrong address or password fails here.
    ///
    /// # Errors
    ///
    /// The client's error if the broker cannot be reached, refuses the
    /// credentials, or the channel cannot be put in confirm mode.
    pub async fn connect(
        uri: impl Into<String>,
        exchange: impl Into<String>,
    ) -> Result<Self, lapin::Error> {
        let publisher = Self::new(uri, exchange);
        {
            let mut link = publisher.state.lock().await;
            let uri = publisher.uri.as_deref().unwrap_or_default();
            let conn = Connection::connect(uri, connection_properties()).await?;
            let channel = open_channel(&conn).await?;
            link.conn = Some(conn);
            link.channel = Some(channel);
        }
        Ok(publisher)
    }

    /// A publisher on an existing connection: it opens its own channel.
    /// Without a URI it cannot replace the connection once that is lost;
    /// every batch then fails (transiently) until the publisher is
    /// rebuilt. Prefer [`new`](Self::new) for a relay that must survive
    /// broker restarts.
    pub fn from_connection(conn: Connection, exchange: impl Into<String>) -> Self {
        Self::with_link(
            None,
            exchange.into(),
            Link {
                conn: Some(conn),
                channel: None,
            },
        )
    }

    fn with_link(uri: Option<String>, exchange: String, link: Link) -> Self {
        Self {
            uri: Hidden(uri),
            exchange,
            by_partition_key: false,
            envelope: Envelope::Plain,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            state: Hidden(tokio::sync::Mutex::new(link)),
        }
    }

    /// Routes by partition key instead of topic: the routing key is the
    /// message's partition key, or its topic if it has none. For a
    /// consistent-hash exchange (`x-consistent-hash`) that spreads keys
    /// over several queues while keeping each key on one queue.
    #[must_use]
    pub fn route_by_partition_key(mut self) -> Self {
        self.by_partition_key = true;
        self
    }

    setters! {
        /// How messages are wrapped (default [`Envelope::Plain`]).
        pub fn with_envelope(envelope: Envelope) => envelope = envelope;

        /// How long to wait for the broker's confirms of a batch (default
        /// 10 s); a message not confirmed in time is a transient failure and
        /// the channel is reopened.
        pub fn with_confirm_timeout(timeout: Duration) => confirm_timeout = timeout;

        /// How long connecting and opening the channel may take (default 5 s).
        pub fn with_connect_timeout(timeout: Duration) => connect_timeout = timeout;
    }

    /// The routing key a message is published with.
    pub fn routing_key_for<'m>(&self, message: &'m OutboxMessage) -> &'m str {
        if self.by_partition_key {
            message.partition_key().unwrap_or(message.topic())
        } else {
            message.topic()
        }
    }

    /// The channel to publish on, (re)connecting if needed.
    async fn channel(&self, link: &mut Link) -> Result<Channel, String> {
        if let Some(ch) = &link.channel {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        link.channel = None;
        if !link.conn.as_ref().is_some_and(|c| c.status().connected()) {
            link.conn = None;
            let Some(uri) = &*self.uri else {
                return Err(
                    "the AMQP connection is lost and this publisher, built on a \
                            connection, has no URI to reconnect with"
                        .to_owned(),
                );
            };
            let conn = tokio::time::timeout(
                self.connect_timeout,
                Connection::connect(uri, connection_properties()),
            )
            .await
            .map_err(|_| format!("connecting took longer than {:?}", self.connect_timeout))?
            .map_err(|e| format!("cannot connect to the AMQP broker: {e}"))?;
            link.conn = Some(conn);
        }
        let conn = link.conn.as_ref().expect("connected above");
        let channel = tokio::time::timeout(self.connect_timeout, open_channel(conn))
            .await
            .map_err(|_| {
                format!(
                    "opening a channel took longer than {:?}",
                    self.connect_timeout
                )
            })?
            .map_err(|e| format!("cannot open a confirm-mode channel: {e}"))?;
        link.channel = Some(channel.clone());
        Ok(channel)
    }

    /// The routing key, body and properties of a message, or why it cannot
    /// be sent.
    fn prepare(
        &self,
        m: &OutboxMessage,
    ) -> Result<(ShortString, Vec<u8>, BasicProperties), PublishError> {
        let short = |what: &str, v: &str| -> Result<ShortString, PublishError> {
            ShortString::try_new(v).map_err(|_| {
                permanent(format!(
                    "{what} is {} bytes; AMQP allows at most {MAX_SHORT_STRING}",
                    v.len()
                ))
            })
        };
        let routing_key = short("the routing key", self.routing_key_for(m))?;
        let (body, content_type) = self.envelope.body(m);
        let mut headers = FieldTable::default();
        let mut refused = None;
        self.envelope.each_header(m, CePrefix::Amqp, |k, v| {
            if refused.is_some() {
                return;
            }
            let k = k.as_str();
            match ShortString::try_new(k) {
                Ok(name) => {
                    headers.insert(name, AMQPValue::LongString(LongString::from(v)));
                }
                Err(_) => {
                    refused = Some(permanent(format!(
                        "header name {k:?} is {} bytes; AMQP allows at most {MAX_SHORT_STRING}",
                        k.len()
                    )))
                }
            }
        });
        if let Some(e) = refused {
            return Err(e);
        }
        let timestamp = u64::try_from(m.created_at().timestamp()).unwrap_or(0);
        let props = BasicProperties::default()
            .with_message_id(ShortString::from(m.id().to_string()))
            .with_delivery_mode(2)
            .with_content_type(short("the content type", &content_type)?)
            .with_type(short("the event type", m.event_type())?)
            .with_timestamp(timestamp)
            .with_headers(headers);
        Ok((routing_key, body, props))
    }
}

fn connection_properties() -> ConnectionProperties {
    ConnectionProperties::default().with_connection_name("outbox relay".into())
}

async fn open_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

#[async_trait]
impl Publisher for RabbitMqPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        // A name no broker accepts is a misconfigured publisher, like an
        // exchange that does not exist: transient, as the table says.
        let Ok(exchange) = ShortString::try_new(self.exchange.as_str()) else {
            let reason = format!(
                "the exchange name is {} bytes; AMQP allows at most {MAX_SHORT_STRING}",
                self.exchange.len()
            );
            return batch
                .iter()
                .map(|_| Err(transient(reason.clone(), None)))
                .collect();
        };
        let mut link = self.state.lock().await;
        let channel = match self.channel(&mut link).await {
            Ok(c) => c,
            Err(reason) => {
                return batch
                    .iter()
                    .map(|_| Err(transient(reason.clone(), None)))
                    .collect()
            }
        };
        let mut results: Vec<Option<Result<(), PublishError>>> =
            batch.iter().map(|_| None).collect();
        let mut confirms: Vec<(usize, PublisherConfirm)> = Vec::with_capacity(batch.len());
        let mut broken = false;
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let deadline = Instant::now() + self.confirm_timeout;
        for (i, m) in batch.iter().enumerate() {
            let (routing_key, body, props) = match self.prepare(m) {
                Ok(p) => p,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            if broken {
                results[i] = Some(Err(transient(
                    "not sent: the channel failed earlier in this batch".to_owned(),
                    None,
                )));
                continue;
            }
            let sent = tokio::time::timeout_at(
                deadline,
                channel.basic_publish(exchange.clone(), routing_key, options, &body, props),
            )
            .await;
            match sent {
                Ok(Ok(confirm)) => confirms.push((i, confirm)),
                Ok(Err(e)) => {
                    broken = true;
                    results[i] = Some(Err(transient(
                        "publishing failed".to_owned(),
                        Some(Box::new(e)),
                    )));
                }
                Err(_) => {
                    broken = true;
                    results[i] = Some(Err(transient(
                        format!("sending took longer than {:?}", self.confirm_timeout),
                        None,
                    )));
                }
            }
        }
        // Returned messages are matched by message_id: lapin hands a
        // returned message to whichever confirm completes next, which with
        // several messages in flight need not be the returned one's.
        let mut returned: HashMap<String, (u16, String)> = HashMap::new();
        for (i, confirm) in confirms {
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(confirmation)) => {
                    let acked = matches!(
                        confirmation,
                        Confirmation::Ack(_) | Confirmation::NotRequested
                    );
                    if let Some(r) = confirmation.take_message() {
                        if let Some(id) = r.delivery.properties.message_id() {
                            returned.insert(
                                id.as_str().to_owned(),
                                (r.reply_code, r.reply_text.as_str().to_owned()),
                            );
                        }
                    }
                    results[i] = Some(if acked {
                        Ok(())
                    } else {
                        Err(transient(
                            "the broker refused the message (nack)".to_owned(),
                            None,
                        ))
                    });
                }
                Ok(Err(e)) => {
                    broken = true;
                    results[i] = Some(Err(transient(
                        "the channel failed before the broker confirmed".to_owned(),
                        Some(Box::new(e)),
                    )));
                }
                Err(_) => {
                    broken = true;
                    results[i] = Some(Err(transient(
                        format!("no confirm within {:?}", self.confirm_timeout),
                        None,
                    )));
                }
            }
        }
        for (i, m) in batch.iter().enumerate() {
            if let Some((code, text)) = returned.get(&m.id().to_string()) {
                results[i] = Some(Err(permanent(format!(
                    "no queue bound for routing key {:?} on exchange {:?} (returned as \
                     unroutable: {code} {text})",
                    self.routing_key_for(m),
                    self.exchange
                ))));
            }
        }
        if broken {
            // Start the next batch on a fresh channel (and connection, if
            // that is gone too).
            if let Some(ch) = link.channel.take() {
                if ch.status().connected() {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        ch.close(200, ShortString::from("outbox: reopening")),
                    )
                    .await;
                }
            }
        }
        outcomes_or_retry(results)
    }
}
