//! The messages and events the scenarios write.

use std::borrow::Cow;

use outbox::{Event, NewMessage, OutboxMessage};
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
