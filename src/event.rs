//! Typed events: a serde type that knows its topic, type and version.

use std::borrow::Cow;

use serde::Serialize;

/// A domain event that can be enqueued in one call.
///
/// ```
/// use outbox::Event;
/// use serde::Serialize;
///
/// #[derive(Serialize)]
/// struct CandidateHired {
///     candidate_id: u64,
///     start_date: String,
/// }
///
/// impl Event for CandidateHired {
///     const EVENT_TYPE: &'static str = "CandidateHired";
///     const SCHEMA_VERSION: i32 = 1;
///     fn topic(&self) -> std::borrow::Cow<'_, str> {
///         "recruiting.candidates".into()
///     }
///     fn partition_key(&self) -> Option<String> {
///         Some(format!("candidate-{}", self.candidate_id))
///     }
/// }
///
/// let msg = outbox::NewMessage::from_event(&CandidateHired {
///     candidate_id: 42,
///     start_date: "2026-01-05".into(),
/// })?;
/// assert_eq!(msg.partition_key(), Some("candidate-42"));
/// # Ok::<(), outbox::Error>(())
/// ```
pub trait Event: Serialize {
    /// The event type carried with the message (for example
    /// `"CandidateHired"`).
    const EVENT_TYPE: &'static str;
    /// The payload's schema version; bump it when the shape changes.
    const SCHEMA_VERSION: i32 = 1;

    /// The topic (destination) for this event.
    fn topic(&self) -> Cow<'_, str>;

    /// The ordering key, usually the aggregate's id. Events with the same
    /// key are published in commit order. `None` orders against nothing.
    fn partition_key(&self) -> Option<String> {
        None
    }
}
