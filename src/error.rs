//! The crate's error type.

use std::fmt;

use crate::message::MessageId;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate, except a publisher's own
/// failure, which is a [`PublishError`](crate::PublishError).
///
/// Display speaks of this layer only; the underlying cause, where there is
/// one, is reached through [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A schema, table or prefix name from configuration is not a valid SQL
    /// identifier. Nothing was sent to the database.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidIdentifier {
        /// Which setting held the name (`schema`, `table prefix`, ...).
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {field} {reason}")]
    InvalidConfig {
        /// The setting, as named by its builder method.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A message was rejected before anything was written (empty topic,
    /// oversized field, ...).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A payload is larger than the outbox accepts (its builder's
    /// `max_payload_bytes`); nothing was written.
    #[error("payload of {size} bytes is larger than the {limit} bytes the outbox accepts")]
    PayloadTooLarge {
        /// The payload's size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A payload could not be serialized; nothing was written.
    #[error("payload could not be serialized")]
    Serialize(#[source] serde_json::Error),
    /// A stored payload could not be deserialized into the requested type.
    #[error("payload of message {id} could not be deserialized")]
    Deserialize {
        /// The message whose payload failed.
        id: MessageId,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The database reported an error. Its message is the driver's, with
    /// the server's own words for errors the server returned.
    #[error(transparent)]
    Database(sqlx::Error),
    /// The outbox tables are at a newer migration version than this build of
    /// the crate knows; running it against them could corrupt data.
    #[error("outbox schema is at version {found}, newer than the {supported} this version of the crate supports")]
    SchemaTooNew {
        /// The version found in the database.
        found: i64,
        /// The newest version this crate knows.
        supported: i64,
    },
    /// The outbox tables are at an older migration version than this build
    /// of the crate needs: run `migrate()` (the relay does not start until
    /// then).
    #[error("outbox schema is at version {found}, older than the {required} this version of the crate needs: run migrate()")]
    SchemaTooOld {
        /// The version found in the database (0: no tables).
        found: i64,
        /// The version this crate needs.
        required: i64,
    },
    /// The database server is a version or kind this backend does not
    /// support (found at `migrate()`, before anything is changed).
    #[error("unsupported database server {found:?}: this backend needs {required}")]
    UnsupportedDatabase {
        /// The server's version string.
        found: String,
        /// What the backend needs.
        required: &'static str,
    },
    /// A change-log cursor could not be parsed (it is shown, cut to 200
    /// characters).
    #[error("invalid change cursor {0:?}")]
    InvalidCursor(String),
    /// A change-log cursor belongs to another backend.
    #[error("change cursor {0} belongs to another database backend")]
    CursorBackendMismatch(String),
    /// A dead letter with this id does not exist.
    #[error("no dead letter with id {0}")]
    DeadLetterNotFound(MessageId),
    /// A dead letter cannot be replayed while a message with its id is
    /// pending (ids are unique among pending messages); it stays in the
    /// dead letters.
    #[error("dead letter {0} cannot be replayed while a message with its id is pending")]
    DeadLetterIdPending(MessageId),
    /// A task of the crate's own ended abnormally (it panicked, or was
    /// aborted as a runtime shut down): the relay's, or one that began a
    /// transaction for the crate.
    #[error("a task of the outbox ended abnormally")]
    RelayTask(#[source] tokio::task::JoinError),
    /// A network operation of the crate's own failed: the console could
    /// not read its address or serve.
    #[error("network I/O failed")]
    Io(#[source] std::io::Error),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Database(e)
    }
}

/// Whether a failed publish may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The destination was unreachable, overloaded or timed out: retry with
    /// backoff.
    Transient,
    /// The destination rejected the message for good (malformed, too large,
    /// forbidden): dead-letter it.
    Permanent,
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A publisher's failure to deliver one message.
///
/// The kind decides what the relay does next: a transient failure is retried
/// with exponential backoff, a permanent one dead-letters the message at
/// once.
#[derive(Debug)]
pub struct PublishError {
    kind: PublishErrorKind,
    source: BoxError,
    retry_after: Option<std::time::Duration>,
}

impl PublishError {
    /// A failure that may pass if the message is sent again later.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        Self {
            kind: PublishErrorKind::Transient,
            source: source.into(),
            retry_after: None,
        }
    }

    /// A failure that will not pass by retrying; the message is
    /// dead-lettered.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self {
            kind: PublishErrorKind::Permanent,
            source: source.into(),
            retry_after: None,
        }
    }

    setters! {
        /// Asks the relay to wait this long before the next attempt (for
        /// example an HTTP `Retry-After`). It replaces the relay's computed
        /// backoff for this attempt and is not capped by the retry policy's
        /// maximum delay: the destination knows when it will take the message
        /// again. A publisher that cannot trust its destination caps it.
        pub fn with_retry_after(delay: std::time::Duration) => retry_after = Some(delay);
    }

    /// Transient or permanent.
    pub fn kind(&self) -> PublishErrorKind {
        self.kind
    }

    /// True if the relay will retry the message.
    pub fn is_transient(&self) -> bool {
        self.kind == PublishErrorKind::Transient
    }

    /// The delay the destination asked for, if any.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PublishErrorKind::Transient => f.write_str("transient publish failure"),
            PublishErrorKind::Permanent => f.write_str("permanent publish failure"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Longest error text stored with a message, in characters.
const MAX_ERROR_CHARS: usize = 2000;

/// Renders an error and its chain of causes on one line, for storage as a
/// dead letter's last error: NUL characters (which PostgreSQL text cannot
/// hold) are dropped and the text is cut to a bounded length, so storing an
/// error can never fail.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let next = s.to_string();
        // Some errors repeat their source in their own message.
        if !out.ends_with(&next) {
            out.push_str(": ");
            out.push_str(&next);
        }
        cur = s.source();
    }
    let mut clean: String = out
        .chars()
        .filter(|c| *c != '\0')
        .take(MAX_ERROR_CHARS)
        .collect();
    if clean.len() < out.len() && out.chars().count() > MAX_ERROR_CHARS {
        clean.push('…');
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_errors_hold_no_nul_and_stay_bounded() {
        let e = PublishError::transient(format!("bad\0body{}", "x".repeat(5000)));
        let s = error_chain(&e);
        assert!(!s.contains('\0'));
        assert!(s.starts_with("transient publish failure: badbody"));
        assert!(s.chars().count() <= MAX_ERROR_CHARS + 1);
    }
}
