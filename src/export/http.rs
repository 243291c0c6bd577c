//! The change log over HTTP, for consumers that can only make requests
//! (feature `export-http`): an [`axum`] router to mount in the producer's
//! own application.
//!
//! | request | answer |
//! |---|---|
//! | `GET /changes?consumer=crm&limit=500` | the next page after `crm`'s stored cursor |
//! | `GET /changes?cursor=<cursor>&limit=500` | the next page after an explicit cursor |
//! | `PUT /cursors/crm` with `{"cursor": "<next_cursor>"}` | commits `crm`'s cursor (204) |
//! | `POST /changes?consumer=crm&limit=500` with `{"cursor": "<next_cursor>"}` | commits `crm`'s cursor, then answers the page after it: one request a page |
//!
//! A page is JSON: `{"changes": [{"entity_type", "key", "kind", "data",
//! "before", "first_position", "last_position", "merged"}], "next_cursor":
//! "...", "has_more": bool, "caught_up": bool}`. The consumer applies the
//! changes, then commits `next_cursor`; re-reading a page it did not commit
//! is safe. A consumer that reads on after committing sends the commit with
//! `POST /changes` and gets the next page in the same answer, as the
//! outboxes' `commit_and_read` does: the cursor is stored before the page
//! is read, so a request that fails after storing it leaves the consumer
//! where it asked to be, and the next `GET` or `POST` reads on from there.
//! Bad parameters, and a body that is not `{"cursor": "..."}` in JSON,
//! answer 400 with `{"error": "..."}` (a body sent without a JSON content
//! type 415, one too large 413, with the same shape); database errors
//! answer 503.
//!
//! ```no_run
//! # async fn demo(outbox: outbox::PgOutbox) -> std::io::Result<()> {
//! let app = axum::Router::new().nest("/exports", outbox::export::http::router(outbox));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! Put it behind the application's own authentication: anyone who can call
//! it reads every change and moves consumers' cursors.

use async_trait::async_trait;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ChangePage, Cursor};
use crate::change::ChangeKind;
use crate::error::{Error, Result};

/// Most changes one request may ask for.
pub const MAX_LIMIT: i64 = 10_000;

/// A change log that can be served: implemented by
/// [`PgOutbox`](crate::PgOutbox) and [`SqliteOutbox`](crate::SqliteOutbox).
#[async_trait]
pub trait ChangeFeed: Clone + Send + Sync + 'static {
    /// The page after `cursor`.
    async fn page_after(&self, cursor: &Cursor, limit: i64) -> Result<ChangePage>;
    /// The page after `consumer`'s stored cursor.
    async fn page_for(&self, consumer: &str, limit: i64) -> Result<ChangePage>;
    /// Stores `consumer`'s cursor.
    async fn store_cursor(&self, consumer: &str, cursor: &Cursor) -> Result<()>;
    /// Stores `consumer`'s cursor, then reads the page after it. By
    /// default two calls, [`store_cursor`](Self::store_cursor) then
    /// [`page_after`](Self::page_after); the crate's outboxes do it in one
    /// call (`commit_and_read`).
    async fn commit_and_page(
        &self,
        consumer: &str,
        cursor: &Cursor,
        limit: i64,
    ) -> Result<ChangePage> {
        self.store_cursor(consumer, cursor).await?;
        self.page_after(cursor, limit).await
    }
}

macro_rules! feed {
    ($t:ty) => {
        #[async_trait]
        impl ChangeFeed for $t {
            async fn page_after(&self, cursor: &Cursor, limit: i64) -> Result<ChangePage> {
                self.changes_after(cursor, limit).await
            }
            async fn page_for(&self, consumer: &str, limit: i64) -> Result<ChangePage> {
                self.changes_since(consumer, limit).await
            }
            async fn store_cursor(&self, consumer: &str, cursor: &Cursor) -> Result<()> {
                self.commit_cursor(consumer, cursor).await
            }
            async fn commit_and_page(
                &self,
                consumer: &str,
                cursor: &Cursor,
                limit: i64,
            ) -> Result<ChangePage> {
                self.commit_and_read(consumer, cursor, limit).await
            }
        }
    };
}

#[cfg(feature = "postgres")]
feed!(crate::PgOutbox);
#[cfg(feature = "sqlite")]
feed!(crate::SqliteOutbox);
#[cfg(feature = "mysql")]
feed!(crate::MySqlOutbox);

/// The router: `GET /changes`, `POST /changes` and
/// `PUT /cursors/{consumer}`.
pub fn router<F: ChangeFeed>(feed: F) -> Router {
    Router::new()
        .route("/changes", get(changes::<F>).post(commit_and_page::<F>))
        .route("/cursors/{consumer}", put(commit::<F>))
        .with_state(feed)
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    consumer: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
struct PageBody<'a> {
    changes: Vec<ChangeBody<'a>>,
    next_cursor: String,
    has_more: bool,
    caught_up: bool,
}

#[derive(Debug, Serialize)]
struct ChangeBody<'a> {
    entity_type: &'a str,
    key: &'a str,
    kind: ChangeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<&'a serde_json::Value>,
    first_position: i64,
    last_position: i64,
    merged: usize,
}

#[derive(Debug, Deserialize)]
struct CommitBody {
    cursor: String,
}

fn problem(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn failure(e: Error) -> Response {
    match e {
        Error::InvalidCursor(_) | Error::CursorBackendMismatch(_) | Error::InvalidConfig { .. } => {
            problem(StatusCode::BAD_REQUEST, e.to_string())
        }
        other => {
            tracing::warn!(error = %crate::error::error_chain(&other), "change export failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the change log is unavailable".to_owned(),
            )
        }
    }
}

/// The answer to a body that is not `{"cursor": "..."}` in JSON.
fn bad_body(e: JsonRejection) -> Response {
    // Not JSON, or not that shape: a bad request like any bad parameter.
    // Otherwise (no JSON content type, a body too large or cut off) the
    // status axum gives it.
    let status = match e {
        JsonRejection::JsonSyntaxError(_) | JsonRejection::JsonDataError(_) => {
            StatusCode::BAD_REQUEST
        }
        _ => e.status(),
    };
    problem(
        status,
        format!(
            "the body must be {{\"cursor\": \"...\"}} in JSON: {}",
            e.body_text()
        ),
    )
}

/// The answer to give if the consumer name is unusable.
fn bad_consumer(consumer: &str) -> Option<Response> {
    (consumer.is_empty() || consumer.len() > 200 || consumer.contains('\0')).then(|| {
        problem(
            StatusCode::BAD_REQUEST,
            "consumer must be 1 to 200 bytes without NUL".to_owned(),
        )
    })
}

/// The parameters of a page request and the page size asked for (500 if
/// not given), or why they are refused: a query string that does not parse
/// (a `limit` that is not a number, a parameter given twice) or a size out
/// of range.
fn page_query(
    q: std::result::Result<Query<PageQuery>, QueryRejection>,
) -> std::result::Result<(PageQuery, i64), String> {
    let Query(q) = q.map_err(|e| e.body_text())?;
    let limit = q.limit.unwrap_or(500);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(format!("limit must be between 1 and {MAX_LIMIT}"));
    }
    Ok((q, limit))
}

async fn changes<F: ChangeFeed>(
    State(feed): State<F>,
    q: std::result::Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let (q, limit) = match page_query(q) {
        Ok(parsed) => parsed,
        Err(why) => return problem(StatusCode::BAD_REQUEST, why),
    };
    let page = match (&q.cursor, &q.consumer) {
        (Some(c), _) => match c.parse::<Cursor>() {
            Ok(cursor) => feed.page_after(&cursor, limit).await,
            Err(e) => return failure(e),
        },
        (None, Some(consumer)) => {
            if let Some(r) = bad_consumer(consumer) {
                return r;
            }
            feed.page_for(consumer, limit).await
        }
        (None, None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "give a consumer or a cursor".to_owned(),
            )
        }
    };
    page_answer(page)
}

/// The answer to a page request: the page as JSON, or the error.
fn page_answer(page: Result<ChangePage>) -> Response {
    let page = match page {
        Ok(page) => page,
        Err(e) => return failure(e),
    };
    let body = PageBody {
        next_cursor: page.next_cursor().to_string(),
        has_more: page.has_more(),
        caught_up: page.caught_up(),
        changes: page
            .changes()
            .iter()
            .map(|c| {
                let change = c.change();
                ChangeBody {
                    entity_type: change.entity_type(),
                    key: change.key(),
                    kind: change.kind(),
                    data: change.data(),
                    before: change.before(),
                    first_position: c.first_position(),
                    last_position: c.last_position(),
                    merged: c.merged(),
                }
            })
            .collect(),
    };
    Json(body).into_response()
}

/// `POST /changes?consumer=..&limit=..` with `{"cursor": ".."}`: stores the
/// consumer's cursor, then answers the page after it.
async fn commit_and_page<F: ChangeFeed>(
    State(feed): State<F>,
    q: std::result::Result<Query<PageQuery>, QueryRejection>,
    body: std::result::Result<Json<CommitBody>, JsonRejection>,
) -> Response {
    let (q, limit) = match page_query(q) {
        Ok(parsed) => parsed,
        Err(why) => return problem(StatusCode::BAD_REQUEST, why),
    };
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return bad_body(e),
    };
    let consumer = match (&q.consumer, &q.cursor) {
        (Some(consumer), None) => consumer,
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "POST /changes commits a consumer's cursor: give consumer (and the cursor in the body), not cursor".to_owned(),
            )
        }
    };
    if let Some(r) = bad_consumer(consumer) {
        return r;
    }
    let cursor = match body.cursor.parse::<Cursor>() {
        Ok(c) => c,
        Err(e) => return failure(e),
    };
    page_answer(feed.commit_and_page(consumer, &cursor, limit).await)
}

async fn commit<F: ChangeFeed>(
    State(feed): State<F>,
    Path(consumer): Path<String>,
    body: std::result::Result<Json<CommitBody>, JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return bad_body(e),
    };
    if let Some(r) = bad_consumer(&consumer) {
        return r;
    }
    let cursor = match body.cursor.parse::<Cursor>() {
        Ok(c) => c,
        Err(e) => return failure(e),
    };
    match feed.store_cursor(&consumer, &cursor).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failure(e),
    }
}
