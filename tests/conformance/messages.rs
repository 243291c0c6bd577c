//! The messages and events the scenarios write.

use std::borrow::Cow;
use std::sync::Arc;

use outbox::{
    Event, FnPublisher, InMemoryPublisher, NewMessage, OutboxMessage, PublishError, Publisher,
};
use serde::Serialize;

/// A JSON message numbered `n` under partition key `key`.
pub fn keyed(topic: &str, key: &str, n: u64) -> NewMessage {
    NewMessage::json(topic, &serde_json::json!({ "key": key, "n": n }))
        .unwrap()
        .with_partition_key(key)
}

/// A JSON message numbered `n`, without a partition key.
pub fn numbered(topic: &str, n: u64) -> NewMessage {
    NewMessage::json(topic, &serde_json::json!({ "n": n })).unwrap()
}

/// The number a message of [`keyed`] or [`numbered`] carries.
pub fn n_of(m: &OutboxMessage) -> u64 {
    m.payload_json::<serde_json::Value>().expect("payload")["n"]
        .as_u64()
        .expect("n")
}

/// A publisher that asks `verdict` about each message: an error fails the
/// message with it; `None` publishes it to `published`.
pub fn judged<V>(published: &InMemoryPublisher, verdict: V) -> impl Publisher
where
    V: Fn(&OutboxMessage) -> Option<PublishError> + Send + Sync + 'static,
{
    let published = published.clone();
    let verdict = Arc::new(verdict);
    FnPublisher::new(move |m: OutboxMessage| {
        let failure = verdict(&m);
        let published = published.clone();
        async move {
            match failure {
                Some(e) => Err(e),
                None => published.publish(std::slice::from_ref(&m)).await.remove(0),
            }
        }
    })
}

/// The recruiting domain's typed event.
#[derive(Serialize)]
pub struct CandidateHired {
    pub candidate_id: i64,
}

impl Event for CandidateHired {
    const EVENT_TYPE: &'static str = "CandidateHired";
    const SCHEMA_VERSION: i32 = 3;
    fn topic(&self) -> Cow<'_, str> {
        "recruiting.candidates".into()
    }
    fn partition_key(&self) -> Option<String> {
        Some(format!("candidate-{}", self.candidate_id))
    }
}
