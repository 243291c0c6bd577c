//! The cause a broker publisher puts inside a [`PublishError`]: a readable
//! reason, and the client's error behind it when there is one.

// Each publisher uses the constructors it needs: with only some publishers
// enabled, the others are unused.
#![cfg_attr(
    not(all(
        feature = "amqp",
        feature = "nats",
        feature = "redis",
        feature = "http",
        feature = "kafka"
    )),
    allow(dead_code)
)]

use std::fmt;

use crate::error::PublishError;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure with a readable reason and the client's error as its cause.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) reason: String,
    pub(super) source: Option<BoxError>,
}

impl Failure {
    pub(super) fn new(reason: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            reason: reason.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// A permanent failure of this message alone, with no client error behind
/// it (a name the broker can never accept, a payload over its limit).
pub(super) fn permanent(reason: String) -> PublishError {
    PublishError::permanent(Failure {
        reason,
        source: None,
    })
}

/// A transient failure, with the client's error when there is one.
pub(super) fn transient(reason: String, source: Option<BoxError>) -> PublishError {
    PublishError::transient(Failure { reason, source })
}

/// The results of a batch from what was recorded per message: a message
/// with no outcome recorded (a code path that left it out) counts as a
/// transient failure, to be retried, never as published.
pub(super) fn outcomes_or_retry(
    outcomes: Vec<Option<Result<(), PublishError>>>,
) -> Vec<Result<(), PublishError>> {
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Err(transient(
                    "no outcome recorded for this message".to_owned(),
                    None,
                ))
            })
        })
        .collect()
}
