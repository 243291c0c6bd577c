//! Who may use the console, checked before every request: credentials
//! when they are set, loopback only when they are not, and for requests
//! that change anything a CSRF token and a console that is not read-only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The header a changing request carries the CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// How a request proves who sent it.
#[derive(Clone)]
pub(crate) enum Credentials {
    /// `Authorization: Basic`, as a browser sends once asked.
    Basic { user: String, password: String },
    /// `Authorization: Bearer`, as a proxy in front of the console adds.
    Bearer(String),
}

impl Credentials {
    /// A user, password or token that is empty: never accepted.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Credentials::Basic { user, password } => user.is_empty() || password.is_empty(),
            Credentials::Bearer(token) => token.is_empty(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .finish_non_exhaustive(),
            Credentials::Bearer(_) => f.write_str("Bearer(..)"),
        }
    }
}

/// Who may use a console or a group's index, and whether they may change
/// anything: what [`guard`] checks.
pub(crate) struct Gate {
    pub(crate) credentials: Option<Credentials>,
    pub(crate) read_only: bool,
    /// The token a changing request carries, as the page holds it.
    pub(crate) csrf: String,
}

impl Gate {
    /// A gate with a fresh CSRF token: 122 random bits from the system's
    /// generator, as 32 hex digits.
    pub(crate) fn new(credentials: Option<Credentials>, read_only: bool) -> Gate {
        Gate {
            credentials,
            read_only,
            csrf: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

/// Refuses, before anything is served, credentials that are empty and,
/// without credentials, an address other than loopback.
pub(crate) fn check_listener(
    credentials: Option<&Credentials>,
    addr: SocketAddr,
) -> crate::error::Result<()> {
    if credentials.is_some_and(Credentials::is_empty) {
        return Err(crate::error::Error::InvalidConfig {
            field: "console credentials",
            reason: "a user, password or token is empty".into(),
        });
    }
    if credentials.is_none() && !addr.ip().is_loopback() {
        return Err(crate::error::Error::InvalidConfig {
            field: "console listen address",
            reason: format!(
                "{addr} is not loopback: without credentials the console listens only \
                 on 127.0.0.1 or ::1; set basic or bearer auth to listen there"
            ),
        });
    }
    Ok(())
}

/// An answer that refuses a request, with the reason as JSON.
pub(crate) fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": reason.into() }))).into_response()
}

/// Compares two secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn authorized(credentials: &Credentials, headers: &HeaderMap) -> bool {
    if credentials.is_empty() {
        return false;
    }
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    match credentials {
        Credentials::Basic { user, password } => scheme(given, "Basic")
            .and_then(|b| decode_base64(b.trim()))
            .is_some_and(|pair| same(&pair, format!("{user}:{password}").as_bytes())),
        Credentials::Bearer(token) => {
            scheme(given, "Bearer").is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()))
        }
    }
}

/// The credentials after an authorization scheme, named in any case
/// (RFC 9110).
fn scheme<'a>(given: &'a str, name: &str) -> Option<&'a str> {
    let (s, rest) = given.split_once(' ')?;
    s.eq_ignore_ascii_case(name).then_some(rest)
}

/// Standard base64 with padding, as `Authorization: Basic` uses.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Some(out)
}

/// Whether the `Host` a browser asked for names this machine: without
/// credentials, a page of another site that resolves its own name to
/// 127.0.0.1 must not reach the console (DNS rebinding).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a proxy passed the request on: a proxy on this machine makes
/// every client look local.
fn forwarded(headers: &HeaderMap) -> bool {
    ["forwarded", "x-forwarded-for", "via"]
        .iter()
        .any(|h| headers.contains_key(*h))
}

/// Checks every request; see the module documentation.
pub(crate) async fn guard(
    State(state): State<Arc<Gate>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    match &state.credentials {
        Some(credentials) => {
            if !authorized(credentials, headers) {
                let mut answer = refuse(StatusCode::UNAUTHORIZED, "credentials required");
                if matches!(credentials, Credentials::Basic { .. }) {
                    answer.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static(
                            "Basic realm=\"outbox\", charset=\"UTF-8\"",
                        ),
                    );
                }
                return answer;
            }
        }
        None => {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0);
            match peer {
                Some(peer)
                    if peer.ip().is_loopback() && loopback_host(headers) && !forwarded(headers) => {
                }
                Some(_) => {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        "this console has no credentials set, so it answers only on \
                         loopback (127.0.0.1, ::1, localhost) and not through a proxy; set \
                         basic or bearer auth",
                    )
                }
                None => {
                    return refuse(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "this console has no credentials set and cannot see the client's \
                         address: serve it with `into_make_service_with_connect_info` \
                         (as `Console::serve` does) or set credentials",
                    )
                }
            }
        }
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        if state.read_only {
            return refuse(StatusCode::FORBIDDEN, "this console is read-only");
        }
        let token = headers.get(CSRF_HEADER).map(|v| v.as_bytes());
        if !token.is_some_and(|t| same(t, state.csrf.as_bytes())) {
            return refuse(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token: changes are made from the console's own page",
            );
        }
    }
    let mut answer = next.run(request).await;
    // Payloads stay out of caches; nothing is read as another type.
    let headers = answer.headers_mut();
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode() {
        assert_eq!(decode_base64("b246Y2FsbA==").unwrap(), b"on:call");
        assert_eq!(decode_base64("YWJj").unwrap(), b"abc");
        assert_eq!(decode_base64("YWI=").unwrap(), b"ab");
        assert!(decode_base64("YW=").is_none());
        assert!(decode_base64("Y*==").is_none());
    }

    #[test]
    fn only_names_of_this_machine_are_loopback_hosts() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, h.parse().unwrap());
            loopback_host(&m)
        };
        assert!(host("127.0.0.1:8080"));
        assert!(host("localhost:3000"));
        assert!(host("[::1]:9000"));
        assert!(host("LOCALHOST"));
        assert!(!host("evil.example:8080"));
        assert!(!host("10.0.0.5"));
        assert!(!host("localhost.evil.example"));
        assert!(!loopback_host(&HeaderMap::new()), "no Host at all");
    }

    #[test]
    fn the_scheme_is_named_in_any_case_and_empty_credentials_never_pass() {
        let with = |value: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, value.parse().unwrap());
            m
        };
        let bearer = Credentials::Bearer("t0ken".into());
        assert!(authorized(&bearer, &with("Bearer t0ken")));
        assert!(authorized(&bearer, &with("bearer t0ken")));
        assert!(!authorized(&bearer, &with("Basic t0ken")));
        let empty = Credentials::Basic {
            user: String::new(),
            password: String::new(),
        };
        // "Basic :" is what empty credentials would look like.
        assert!(!authorized(&empty, &with("Basic Og==")));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
