//! The console of a group of outboxes (as a
//! [`RelayGroup`](crate::RelayGroup) relays them): an index of every
//! outbox with its summary, and each outbox's own console under it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::guard::{self, Credentials, Gate};
use super::{asset, base, secure_page, Console, ConsoleSource, SCRIPT, STYLE};
use crate::error::{Error, Result};

const INDEX: &str = include_str!("assets/group.html");
const INDEX_SCRIPT: &str = include_str!("assets/group.js");

/// Outboxes the index reads at once.
const AT_ONCE: usize = 8;

/// How long the index waits for one outbox before it shows it as
/// unreachable.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The console of many outboxes, each named: at `/` an index of them
/// (pending, oldest pending age, dead letters, blocked keys, live relays
/// and a status, refreshed every few seconds from `/api/outboxes`), and
/// each outbox's [`Console`] at `/o/<name>`, its name percent-encoded
/// (every byte but letters, digits and `-._~`).
///
/// The group's credentials hold for the index and every outbox's console
/// alike (they replace those of the consoles added; a console added with
/// credentials of its own keeps them in a group without any), and so does
/// [`read_only`](Self::read_only). Without credentials the index answers
/// loopback only, as a [`Console`] does.
///
/// ```no_run
/// # async fn demo(eu: outbox::PgOutbox, us: outbox::PgOutbox) -> outbox::Result<()> {
/// use outbox::console::{Console, ConsoleGroup};
///
/// let group = ConsoleGroup::new()
///     .add("eu", Console::new(eu))?
///     .add("us", Console::new(us).hide_payloads(true))?
///     .bearer_token("from-the-proxy");
/// let app: axum::Router = axum::Router::new().nest("/outboxes", group.router());
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct ConsoleGroup {
    members: Vec<(String, Console)>,
    credentials: Option<Credentials>,
    read_only: bool,
    max_pending_age: Option<Duration>,
}

/// One outbox as the index reads it.
struct Member {
    name: String,
    path: String,
    source: Arc<dyn ConsoleSource>,
}

/// What the index's requests share.
struct Index {
    members: Vec<Member>,
    max_pending_age: Duration,
}

impl ConsoleGroup {
    /// A group without outboxes yet: loopback only, changes allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the console of the outbox named `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (field `outbox_name`) for a name a
    /// [`RelayGroup`](crate::RelayGroup) would refuse (empty, longer than
    /// 128 characters, holding a control character), for `.` and `..`
    /// (which a browser takes out of a path), and for a name already in
    /// the group.
    pub fn add(mut self, name: impl Into<String>, console: Console) -> Result<Self> {
        let name = name.into();
        crate::RelayGroup::validate_name(&name)?;
        let reason = if name == "." || name == ".." {
            format!("{name:?} cannot name a path segment")
        } else if self.members.iter().any(|(n, _)| *n == name) {
            format!("{name:?} is already in the group")
        } else {
            self.members.push((name, console));
            return Ok(self);
        };
        Err(Error::InvalidConfig {
            field: "outbox_name",
            reason,
        })
    }

    /// The names of the outboxes, in the order they were added.
    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Requires `Authorization: Basic` for the index and every outbox's
    /// console; see [`Console::basic_auth`].
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Basic {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Requires `Authorization: Bearer` for the index and every outbox's
    /// console; see [`Console::bearer_token`].
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Bearer(token.into()));
        self
    }

    /// Refuses every change in every outbox's console, whatever each was
    /// given. Default off (each console's own setting holds).
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    /// A pending message older than this needs attention on the index
    /// (default 5 minutes).
    pub fn max_pending_age(mut self, age: Duration) -> Self {
        self.max_pending_age = Some(age);
        self
    }

    /// The group's router: the index at `/`, its data at `/api/outboxes`,
    /// each outbox's console at `/o/<name>`. See [`Console::router`] for
    /// the charts' sampling.
    pub fn router(self) -> Router {
        let gate = Arc::new(Gate::new(self.credentials.clone(), self.read_only));
        let mut members = Vec::new();
        let mut consoles = Router::new();
        let mut slashed = Router::new();
        for (name, mut console) in self.members {
            let segment = path_segment(&name);
            members.push(Member {
                path: format!("o/{segment}"),
                source: console.source.clone(),
                name: name.clone(),
            });
            if self.credentials.is_some() {
                console.credentials = self.credentials.clone();
            }
            console.read_only |= self.read_only;
            console.group_name = Some(name);
            consoles = consoles.nest(&format!("/o/{segment}"), console.router());
            // The console's own address has no trailing slash.
            let own = format!("../{segment}");
            slashed = slashed.route(
                &format!("/o/{segment}/"),
                get(move || async move { axum::response::Redirect::to(&own) }),
            );
        }
        let index = Arc::new(Index {
            members,
            max_pending_age: self.max_pending_age.unwrap_or(Duration::from_secs(5 * 60)),
        });
        Router::new()
            .route("/", get(page))
            .route(
                "/group.js",
                get(|| asset(INDEX_SCRIPT, "text/javascript; charset=utf-8")),
            )
            .route(
                "/console.js",
                get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
            )
            .route(
                "/console.css",
                get(|| asset(STYLE, "text/css; charset=utf-8")),
            )
            .route(
                "/favicon.ico",
                get(|| async { axum::http::StatusCode::NO_CONTENT }),
            )
            .route("/api/outboxes", get(outboxes))
            .merge(slashed)
            .layer(axum::middleware::from_fn_with_state(gate, guard::guard))
            .with_state(index)
            .merge(consoles)
    }

    /// Serves the group on `listener` until the task is dropped or the
    /// listener fails.
    ///
    /// # Errors
    ///
    /// As [`Console::serve`].
    pub async fn serve(self, listener: tokio::net::TcpListener) -> Result<()> {
        let addr = listener.local_addr().map_err(Error::Io)?;
        guard::check_listener(self.credentials.as_ref(), addr)?;
        let app = self
            .router()
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app).await.map_err(Error::Io)
    }
}

/// A name as one path segment: every byte but the unreserved characters
/// of RFC 3986 percent-encoded.
fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The index page; names reach it only through its script, as text.
async fn page(
    nested: std::result::Result<
        axum::extract::NestedPath,
        axum::extract::rejection::NestedPathRejection,
    >,
) -> Response {
    secure_page(INDEX.replace("{base}", &base(nested)))
}

/// Every outbox's summary, [`AT_ONCE`] at a time, each within
/// [`READ_TIMEOUT`]; in the order they were added.
async fn outboxes(State(index): State<Arc<Index>>) -> Response {
    let max_age = index.max_pending_age;
    let list: Vec<Value> = futures_util::stream::iter(0..index.members.len())
        .map(|i| {
            let index = index.clone();
            async move {
                let m = &index.members[i];
                let read = tokio::time::timeout(READ_TIMEOUT, summary(m.source.as_ref(), max_age));
                let mut value = match read.await {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => json!({ "status": "unreachable", "error": e }),
                    Err(_) => json!({
                        "status": "unreachable",
                        "error": format!("did not answer within {} s", READ_TIMEOUT.as_secs()),
                    }),
                };
                value["name"] = json!(m.name);
                value["path"] = json!(m.path);
                value
            }
        })
        .buffered(AT_ONCE)
        .collect()
        .await;
    Json(json!({ "outboxes": list })).into_response()
}

/// One outbox's counts and status: `ok`, or `attention` with the reasons.
async fn summary(
    source: &dyn ConsoleSource,
    max_age: Duration,
) -> std::result::Result<Value, String> {
    let read = async {
        Ok::<_, Error>((
            source.stats().await?,
            source.blocked_keys().await?.len(),
            source.relays().await?,
        ))
    };
    let (stats, blocked, relays) = read.await.map_err(|e| e.to_string())?;
    let alive = relays.iter().filter(|r| r.alive).count();
    let mut attention = Vec::new();
    if stats.dead_letters > 0 {
        attention.push(format!("{} dead letter(s)", stats.dead_letters));
    }
    if blocked > 0 {
        attention.push(format!("{blocked} blocked key(s)"));
    }
    if stats.oldest_pending_age.is_some_and(|a| a > max_age) {
        attention.push(format!(
            "a message pending for more than {} s",
            max_age.as_secs()
        ));
    }
    let failing = relays
        .iter()
        .filter(|r| r.alive && r.publish_error.is_some())
        .count();
    if failing > 0 {
        attention.push(format!("{failing} relay(s) cannot publish"));
    }
    if stats.pending > 0 && alive == 0 {
        attention.push("messages pending and no relay alive".to_owned());
    }
    Ok(json!({
        "status": if attention.is_empty() { "ok" } else { "attention" },
        "attention": attention,
        "pending": stats.pending,
        "oldest_pending_seconds": stats.oldest_pending_age.map(|a| a.as_secs_f64()),
        "dead_letters": stats.dead_letters,
        "blocked_keys": blocked,
        "relays_alive": alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_one_path_segment() {
        assert_eq!(path_segment("eu-west_1.a~"), "eu-west_1.a~");
        assert_eq!(path_segment("eu west/1"), "eu%20west%2F1");
        assert_eq!(path_segment("<é>"), "%3C%C3%A9%3E");
        assert_eq!(path_segment("{id}"), "%7Bid%7D");
    }
}
