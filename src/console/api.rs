//! The console's JSON API, which its page calls: what the overview shows,
//! the dead letters, blocked keys and export consumers, and the changes an
//! operator makes (replay, discard, unblock).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::guard::refuse;
use super::history::{self, LAG_COUNTED};
use super::source::discard_matching;
use super::State as ConsoleState;
use crate::error::Error;
use crate::message::MessageId;
use crate::store::{BlockingMessage, DeadLetter, DeadLetterFilter};

type Shared = State<Arc<ConsoleState>>;

/// Dead letters a search lists at most.
const MAX_LISTED: u32 = 1000;

/// An error as an answer: bad input is the caller's (400), a missing dead
/// letter 404, what the crate cannot read 500, anything else the
/// database's (503).
fn failed(e: Error) -> Response {
    let status = match &e {
        Error::DeadLetterNotFound(_) => StatusCode::NOT_FOUND,
        Error::InvalidConfig { .. } => StatusCode::BAD_REQUEST,
        // A stored row or cursor the crate cannot read: retrying will not help.
        Error::Deserialize { .. } | Error::Serialize(_) | Error::InvalidCursor(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    refuse(status, e.to_string())
}

/// A request the console cannot take as it is (400), with the reason.
#[derive(Debug)]
pub(crate) struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        refuse(StatusCode::BAD_REQUEST, self.0)
    }
}

fn bad_request(reason: impl Into<String>) -> BadRequest {
    BadRequest(reason.into())
}

/// Everything the overview shows, with the charts' samples.
pub(crate) async fn overview(State(state): Shared) -> Response {
    let stale = !state.sampler
        && state
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stale(state.sample_every);
    if stale {
        history::sample(state.source.as_ref(), &state.history).await;
    }
    let source = state.source.as_ref();
    let read = async {
        Ok::<_, Error>((
            source.stats_and_topics().await?,
            source.relays().await?,
            source.blocked_keys().await?.len(),
        ))
    };
    let ((stats, topics), relays, blocked) = match read.await {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    let (samples, sample_error) = {
        let h = state.history.lock().unwrap_or_else(|e| e.into_inner());
        (h.samples(), h.error.clone())
    };
    let now = Utc::now();
    Json(json!({
        "now": now,
        "stats": {
            "pending": stats.pending,
            "ready": stats.ready,
            "retry_waiting": stats.retry_waiting,
            "parked": stats.parked,
            "dead_letters": stats.dead_letters,
            "blocked_keys": blocked,
            "oldest_pending_seconds": stats.oldest_pending_age.map(|a| a.as_secs_f64()),
            "table_bytes": stats.table_bytes,
            "dead_tuples": stats.dead_tuples,
            "oldest_transaction_seconds": stats.oldest_xmin_age.map(|a| a.as_secs_f64()),
        },
        "topics": topics.iter().map(|t| json!({
            "topic": t.topic,
            "pending": t.pending,
            "oldest_seconds": (now - t.oldest_created_at).num_milliseconds().max(0) as f64 / 1000.0,
        })).collect::<Vec<_>>(),
        "relays": relays,
        "history": samples,
        "sample_error": sample_error,
        "read_only": state.gate.read_only,
    }))
    .into_response()
}

/// A dead letter search as the page sends it; empty fields are unset.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Search {
    topic: Option<String>,
    key: Option<String>,
    error: Option<String>,
    since: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

fn time(field: &str, text: &str) -> Result<DateTime<Utc>, BadRequest> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| bad_request(format!("{field}: {text:?} is not an RFC 3339 time ({e})")))
}

/// A field's text, trimmed; `None` when absent or blank.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl Search {
    /// The filter, or a 400 naming the field that does not parse.
    fn filter(&self, default_limit: Option<u32>) -> Result<DeadLetterFilter, BadRequest> {
        let mut f = DeadLetterFilter::new();
        if let Some(t) = given(&self.topic) {
            f = f.topic(t);
        }
        if let Some(k) = given(&self.key) {
            f = f.partition_key(k);
        }
        if let Some(e) = given(&self.error) {
            f = f.error_contains(e);
        }
        if let Some(t) = given(&self.since) {
            f = f.dead_since(time("since", t)?);
        }
        if let Some(t) = given(&self.before) {
            f = f.dead_before(time("before", t)?);
        }
        match self.limit().map_err(bad_request)?.or(default_limit) {
            Some(0) => return Err(bad_request("limit: must be at least 1")),
            Some(n) => f = f.limit(n),
            None => {}
        }
        Ok(f)
    }

    fn limit(&self) -> Result<Option<u32>, String> {
        given(&self.limit)
            .map(|l| {
                l.parse()
                    .map_err(|_| format!("limit: {l:?} is not a whole number"))
            })
            .transpose()
    }
}

fn listed(d: &DeadLetter) -> Value {
    let m = &d.message;
    json!({
        "id": d.id(),
        "position": m.position(),
        "topic": m.topic(),
        "key": m.partition_key(),
        "event_type": m.event_type(),
        "attempts": d.attempts,
        "last_error": d.last_error,
        "dead_at": d.dead_at,
    })
}

/// Dead letters that match a search, oldest first.
pub(crate) async fn dead_letters(State(state): Shared, Query(search): Query<Search>) -> Response {
    let filter = match search.filter(Some(100)) {
        Ok(f) => {
            let listed = f.limit.unwrap_or(100).min(MAX_LISTED);
            f.limit(listed)
        }
        Err(r) => return r.into_response(),
    };
    match state.source.dead_letters_matching(&filter).await {
        Ok(list) => Json(json!({ "dead_letters": list.iter().map(listed).collect::<Vec<_>>() }))
            .into_response(),
        Err(e) => failed(e),
    }
}

fn message_id(text: &str) -> Result<MessageId, BadRequest> {
    text.parse()
        .map_err(|_| bad_request(format!("{text:?} is not a message id")))
}

/// One dead letter whole: its payload (unless hidden) and headers.
pub(crate) async fn dead_letter(State(state): Shared, Path(id): Path<String>) -> Response {
    let id = match message_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let found = state
        .source
        .dead_letters_matching(&DeadLetterFilter::new().id(id).limit(1))
        .await;
    let d = match found {
        Ok(list) => match list.into_iter().next() {
            Some(d) => d,
            None => return failed(Error::DeadLetterNotFound(id)),
        },
        Err(e) => return failed(e),
    };
    let m = &d.message;
    let mut value = listed(&d);
    value["created_at"] = json!(m.created_at());
    value["content_type"] = json!(m.content_type());
    value["schema_version"] = json!(m.schema_version());
    value["headers"] = json!(m.headers());
    value["payload_hidden"] = json!(state.hide_payloads);
    if !state.hide_payloads {
        value["payload"] = match std::str::from_utf8(m.payload()) {
            Ok(text) => json!(text),
            Err(_) => json!(format!("({} bytes, not UTF-8)", m.payload().len())),
        };
    }
    Json(value).into_response()
}

/// Replays one dead letter.
pub(crate) async fn replay_one(State(state): Shared, Path(id): Path<String>) -> Response {
    let id = match message_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let filter = DeadLetterFilter::new().id(id).limit(1);
    match state.source.replay_dead_letters(&filter).await {
        Ok(r) if r.replayed == 0 && r.not_replayed.is_empty() => {
            failed(Error::DeadLetterNotFound(id))
        }
        Ok(r) => Json(json!({ "replayed": r.replayed, "not_replayed": r.not_replayed.len() }))
            .into_response(),
        Err(e) => failed(e),
    }
}

/// Discards one dead letter (its id's oldest).
pub(crate) async fn discard_one(State(state): Shared, Path(id): Path<String>) -> Response {
    let id = match message_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match state.source.discard_dead_letter(id).await {
        Ok(()) => Json(json!({ "discarded": 1 })).into_response(),
        Err(e) => failed(e),
    }
}

/// Replays every dead letter a search matches.
pub(crate) async fn replay_matching(State(state): Shared, Json(search): Json<Search>) -> Response {
    let filter = match search.filter(None) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    match state.source.replay_dead_letters(&filter).await {
        Ok(r) => Json(json!({ "replayed": r.replayed, "not_replayed": r.not_replayed.len() }))
            .into_response(),
        Err(e) => failed(e),
    }
}

/// Discards every dead letter a search matches.
pub(crate) async fn discard_matching_letters(
    State(state): Shared,
    Json(search): Json<Search>,
) -> Response {
    let filter = match search.filter(None) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    match discard_matching(state.source.as_ref(), &filter).await {
        Ok(d) => Json(json!({ "discarded": d.discarded, "kept": d.kept })).into_response(),
        Err(e) => failed(e),
    }
}

/// Blocked keys, with where the message that blocks each is.
pub(crate) async fn blocked(State(state): Shared) -> Response {
    match state.source.blocked_keys().await {
        Ok(keys) => Json(json!({
            "blocked_keys": keys.iter().map(|b| json!({
                "key": b.partition_key,
                "position": b.position,
                "since": b.since,
                "message": match b.message {
                    BlockingMessage::Retrying => "retrying",
                    BlockingMessage::Dead => "dead",
                    _ => "gone",
                },
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => failed(e),
    }
}

/// The key to unblock.
#[derive(Debug, Deserialize)]
pub(crate) struct Unblock {
    key: String,
}

/// Lifts a key's block.
pub(crate) async fn unblock(State(state): Shared, Json(body): Json<Unblock>) -> Response {
    match state.source.unblock(&body.key).await {
        Ok(lifted) => Json(json!({ "unblocked": lifted })).into_response(),
        Err(e) => failed(e),
    }
}

/// Export consumers and how far behind each is.
pub(crate) async fn consumers(State(state): Shared) -> Response {
    let now = Utc::now();
    match state.source.export_consumers(LAG_COUNTED).await {
        Ok(list) => Json(json!({
            "consumers": list.iter().map(|c| json!({
                "consumer": c.consumer,
                "cursor": c.cursor.to_string(),
                "behind": c.behind,
                "behind_at_least": c.more,
                "committed_at": c.committed_at,
                "idle_seconds": (now - c.committed_at).num_milliseconds().max(0) as f64 / 1000.0,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => failed(e),
    }
}
