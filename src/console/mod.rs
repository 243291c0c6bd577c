//! A web console for whoever is on call (feature `console`): an [`axum`]
//! router over the operator's API of an outbox, to mount in a service or
//! to run with `outbox console --listen 127.0.0.1:8080`.
//!
//! - **Overview**, refreshed every two seconds: pending messages (ready,
//!   waiting for a retry, parked behind a blocked key), dead letters,
//!   blocked keys, the oldest pending message's age, per topic; the relays
//!   with their leases, heartbeats and publish errors; charts of the last
//!   hour (published per second, pending, oldest age, dead letters, the
//!   largest export consumer lag), sampled every
//!   [`sample_every`](Console::sample_every) for as long as the console
//!   runs.
//! - **Dead letters**: search by topic, key, error text and time; a dead
//!   letter whole, with its payload and headers; replay or discard one, or
//!   every one a search matches.
//! - **Blocked keys** with what holds each, and unblock; **export
//!   consumers** and how far behind each is.
//! - For many outboxes (as a [`RelayGroup`](crate::RelayGroup) relays
//!   them), a [`ConsoleGroup`]: an index of every outbox with its counts
//!   and status, and each one's console under it.
//!
//! Safe by default:
//!
//! - Without credentials the console answers only requests from loopback
//!   addresses that name this machine in their `Host` (so a web page of
//!   another site cannot reach it through DNS rebinding) and that no proxy
//!   forwarded (`Forwarded`, `X-Forwarded-For`, `Via`): a proxy on the same
//!   machine would make every client look local, so a proxied console
//!   needs credentials. It needs the client's address, which
//!   [`Console::serve`] provides (or
//!   `into_make_service_with_connect_info::<SocketAddr>()`).
//! - With [`basic_auth`](Console::basic_auth) or
//!   [`bearer_token`](Console::bearer_token) every request needs them.
//! - A request that changes anything carries the page's CSRF token in the
//!   `X-CSRF-Token` header, which another site's page cannot read or send;
//!   [`read_only`](Console::read_only) refuses every change.
//! - [`hide_payloads`](Console::hide_payloads) keeps payloads off the page.
//! - Its page, script and styles are embedded in the crate: nothing is
//!   fetched from elsewhere.
//!
//! ```no_run
//! # async fn demo(outbox: outbox::PgOutbox) -> outbox::Result<()> {
//! use outbox::console::Console;
//!
//! // Mounted in the service's own router, behind its own authentication:
//! let app: axum::Router = axum::Router::new().nest(
//!     "/outbox",
//!     Console::new(outbox.clone()).bearer_token("from-the-proxy").router(),
//! );
//! // Or served on its own, on loopback (an SSH tunnel away):
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080")
//!     .await
//!     .map_err(outbox::Error::Io)?;
//! Console::new(outbox).serve(listener).await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

mod api;
mod group;
mod guard;
mod history;
mod source;

pub use self::group::ConsoleGroup;
pub use self::source::ConsoleSource;

use self::guard::{Credentials, Gate};
use self::history::History;
use crate::error::{Error, Result};

const PAGE: &str = include_str!("assets/console.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// Configures a console; [`router`](Self::router) or
/// [`serve`](Self::serve) starts it. See the [module documentation](self).
pub struct Console {
    source: Arc<dyn ConsoleSource>,
    credentials: Option<Credentials>,
    read_only: bool,
    hide_payloads: bool,
    sample_every: Duration,
    keep: usize,
    /// The outbox's name in a [`ConsoleGroup`], shown with a way back to
    /// the group's index.
    group_name: Option<String>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("credentials", &self.credentials)
            .field("read_only", &self.read_only)
            .field("hide_payloads", &self.hide_payloads)
            .field("sample_every", &self.sample_every)
            .field("group_name", &self.group_name)
            .finish_non_exhaustive()
    }
}

/// What every request of one console shares.
pub(crate) struct State {
    /// Whether a task samples the charts; otherwise the overview does.
    sampler: bool,
    group_name: Option<String>,
    source: Arc<dyn ConsoleSource>,
    gate: Arc<Gate>,
    hide_payloads: bool,
    sample_every: Duration,
    history: Mutex<History>,
}

impl Console {
    /// A console over `source` (an outbox): loopback only, changes
    /// allowed, payloads shown, a sample every 10 s kept for an hour.
    pub fn new(source: impl ConsoleSource) -> Self {
        Console {
            source: Arc::new(source),
            credentials: None,
            read_only: false,
            hide_payloads: false,
            sample_every: Duration::from_secs(10),
            keep: 360,
            group_name: None,
        }
    }

    /// Requires `Authorization: Basic` with this user and password (the
    /// browser asks for them); the console may then answer on any address.
    /// Serve it over TLS (a proxy in front) beyond a trusted network.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Basic {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Requires `Authorization: Bearer` with this token, as a proxy in
    /// front of the console adds once it has authenticated the operator.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Bearer(token.into()));
        self
    }

    /// Refuses every change (replay, discard, unblock); the page shows no
    /// buttons for them. Default off.
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    /// Leaves payloads off the page and its API (headers are still shown).
    /// Default off.
    pub fn hide_payloads(mut self, on: bool) -> Self {
        self.hide_payloads = on;
        self
    }

    /// How often the charts' samples are taken (default 10 s; at least
    /// 1 s); an hour of them is kept, and at least 60. Each sample reads the
    /// outbox's stats and counts each export consumer's lag.
    pub fn sample_every(mut self, every: Duration) -> Self {
        self.sample_every = every.max(Duration::from_secs(1));
        self.keep = (3600 / self.sample_every.as_secs().max(1)).max(60) as usize;
        self
    }

    /// The console's router. Called inside a Tokio runtime, it also starts
    /// the task that samples the charts, which ends when the router is
    /// dropped; elsewhere the charts are sampled when the page asks.
    pub fn router(self) -> Router {
        let sampler = tokio::runtime::Handle::try_current().is_ok();
        let gate = Arc::new(Gate::new(self.credentials, self.read_only));
        let state = Arc::new(State {
            sampler,
            group_name: self.group_name,
            source: self.source,
            gate: gate.clone(),
            hide_payloads: self.hide_payloads,
            sample_every: self.sample_every,
            history: Mutex::new(History::new(self.keep)),
        });
        if sampler {
            tokio::spawn(history::run(Arc::downgrade(&state), self.sample_every));
        }
        Router::new()
            .route("/", get(page))
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
            .route("/api/overview", get(api::overview))
            .route("/api/dead", get(api::dead_letters))
            .route("/api/dead/replay", post(api::replay_matching))
            .route("/api/dead/discard", post(api::discard_matching_letters))
            .route("/api/dead/{id}", get(api::dead_letter))
            .route("/api/dead/{id}/replay", post(api::replay_one))
            .route("/api/dead/{id}/discard", post(api::discard_one))
            .route("/api/blocked", get(api::blocked))
            .route("/api/blocked/unblock", post(api::unblock))
            .route("/api/consumers", get(api::consumers))
            .layer(axum::middleware::from_fn_with_state(gate, guard::guard))
            .with_state(state)
    }

    /// Serves the console on `listener` until the task is dropped or the
    /// listener fails.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] before anything is served if the listener
    /// is on an address other than loopback and no credentials are set, or
    /// if a user, password or token is empty; [`Error::Io`] if serving
    /// fails.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> Result<()> {
        let addr = listener.local_addr().map_err(Error::Io)?;
        guard::check_listener(self.credentials.as_ref(), addr)?;
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app).await.map_err(Error::Io)
    }
}

/// The page, with its CSRF token and settings. Its links are relative to
/// where the router is mounted (`<base>`), so it works nested under a
/// prefix of the service's own router.
async fn page(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    nested: std::result::Result<
        axum::extract::NestedPath,
        axum::extract::rejection::NestedPathRejection,
    >,
) -> Response {
    // The name is the operator's: escaped, braces too, so that nothing in
    // it is taken for a placeholder.
    let (title, group) = match &state.group_name {
        Some(name) => (
            format!("{} · outbox console", escape(name)),
            format!(
                "<a class=\"group\" href=\"../../\">All outboxes</a>\
                 <span class=\"outbox-name\">{}</span>",
                escape(name)
            ),
        ),
        None => ("outbox console".to_owned(), String::new()),
    };
    let html = PAGE
        .replace("{base}", &base(nested))
        .replace("{csrf}", &state.gate.csrf)
        .replace(
            "{read_only}",
            if state.gate.read_only {
                "true"
            } else {
                "false"
            },
        )
        .replace("{title}", &title)
        .replace("{group}", &group);
    secure_page(html)
}

/// The `<base href>` of a page: where its router is mounted, escaped for
/// an attribute.
fn base(
    nested: std::result::Result<
        axum::extract::NestedPath,
        axum::extract::rejection::NestedPathRejection,
    >,
) -> String {
    let prefix = nested.map_or(String::new(), |n| {
        n.as_str().trim_end_matches('/').to_owned()
    });
    // The prefix is a route the service chose; escaped all the same.
    format!("{prefix}/")
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

/// Text made safe for HTML, in an element or an attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
        .replace('{', "&#123;")
}

/// A page of the console as an answer, with headers that let it load
/// nothing but its own script and styles and keep it out of frames and
/// caches.
fn secure_page(html: String) -> Response {
    let mut answer = Html(html).into_response();
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    answer
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
