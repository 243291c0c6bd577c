//! [`LogPublisher`]: writes each message as a line, for trying the relay
//! out.

use std::io::Write;

use async_trait::async_trait;

use super::{FailedKeys, Publisher};
use crate::error::PublishError;
use crate::message::OutboxMessage;

/// Writes each message to `tracing` (at INFO) or to standard output, and
/// reports success. For development and demos.
#[derive(Debug, Clone, Copy)]
pub struct LogPublisher {
    stdout: bool,
}

impl LogPublisher {
    /// Logs through `tracing` at INFO level, target `outbox::publish`.
    pub fn tracing() -> Self {
        Self { stdout: false }
    }

    /// Prints one line per message to standard output.
    pub fn stdout() -> Self {
        Self { stdout: true }
    }
}

#[async_trait]
impl Publisher for LogPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let mut out = Vec::with_capacity(batch.len());
        let mut failed = FailedKeys::default();
        for m in batch {
            if let Some(e) = failed.held_back(m) {
                out.push(Err(e));
                continue;
            }
            let payload = String::from_utf8_lossy(m.payload());
            if self.stdout {
                let mut lock = std::io::stdout().lock();
                let r = writeln!(
                    lock,
                    "published {} topic={} key={} type={} v{} payload={}",
                    m.id(),
                    m.topic(),
                    m.partition_key().unwrap_or("-"),
                    m.event_type(),
                    m.schema_version(),
                    payload
                );
                let r = r.map_err(PublishError::transient);
                failed.note(m, &r);
                out.push(r);
            } else {
                tracing::info!(
                    target: "outbox::publish",
                    id = %m.id(),
                    topic = m.topic(),
                    key = m.partition_key(),
                    event_type = m.event_type(),
                    version = m.schema_version(),
                    %payload,
                    "published"
                );
                out.push(Ok(()));
            }
        }
        out
    }

    fn keeps_key_order(&self) -> bool {
        true
    }
}
