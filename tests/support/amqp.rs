//! A RabbitMQ topic exchange with one queue bound to it, declared the same
//! way by the AMQP tests and the broker benchmark (which includes this file
//! by path, so it uses nothing else from `support`).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

/// How long the exchange and the queue outlive the connection that
/// declared them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Both durable: they survive a broker restart until deleted.
    Durable,
    /// The exchange is deleted with its last binding and the queue with
    /// the connection: nothing is left behind by a test that fails.
    Transient,
}

/// Declares the topic exchange `exchange` and the queue `queue`, and binds
/// the queue to the exchange under `routing_key`.
pub async fn declare_bound_queue(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    routing_key: &str,
    lifetime: Lifetime,
) -> lapin::Result<()> {
    let durable = lifetime == Lifetime::Durable;
    let exchange_options = ExchangeDeclareOptions {
        durable,
        auto_delete: !durable,
        ..Default::default()
    };
    let queue_options = QueueDeclareOptions {
        durable,
        exclusive: !durable,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            exchange_options,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(queue.into(), queue_options, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}
