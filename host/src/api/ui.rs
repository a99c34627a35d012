//! The dashboard: one page (`GET /`, also under `/ui/`) with its script and
//! style, served from the binary (nothing from a CDN: it works offline), and
//! the session it runs with.
//!
//! The page holds no data of its own: its script reads the same API the CLI
//! reads (`/api/whoami`, `/api/pipeline`, `/api/scenarios`, their stats,
//! `/api/plugins`) and draws the charts itself as SVG, every 5 s. Everything it
//! shows goes into the page as text, never as markup, so an event's value or a
//! scenario's title cannot inject script.
//!
//! Logging in posts the viewer or admin token to `/ui/login`, which opens a
//! session: a random id, kept here with the token's role for 12 hours, set as an
//! `HttpOnly`, `SameSite=Strict` cookie. The token itself never goes into the
//! cookie, so a cookie that leaks (sent in clear to another port of the host)
//! gives a session that ends, not the token; logging out ends it here. The API
//! accepts the session where it accepts a bearer token. A link `/#token=…`
//! logs in too: the fragment never reaches the server or its logs, and the page
//! removes it from the address bar. A write with the session (a rollback) must
//! carry [`WRITE_HEADER`], which only the page's own script sends.
//! `docs/observability.md` shows the page.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::{ApiError, AppState, Role, token_digest};

/// The cookie that carries the token.
pub const SESSION_COOKIE: &str = "weir_session";

/// The header a write with the session cookie must carry.
pub const WRITE_HEADER: &str = "x-weir-write";

/// How long a session lasts, in seconds.
const SESSION_SECS: u32 = 12 * 3600;

/// Sessions open at most; the oldest goes when another opens (only holders
/// of a token can open one).
const MAX_SESSIONS: usize = 10_000;

/// The dashboard's open sessions, by the digest of their id.
#[derive(Debug)]
pub(super) struct Sessions {
    open: Mutex<HashMap<[u8; 32], (Role, Instant)>>,
    /// At most this many ([`MAX_SESSIONS`]).
    cap: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            open: Mutex::default(),
            cap: MAX_SESSIONS,
        }
    }
}

impl Sessions {
    /// Opens a session with `role`; its id, or `None` when the system has no
    /// randomness to give.
    fn open(&self, role: Role) -> Option<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).ok()?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let until = now + Duration::from_secs(u64::from(SESSION_SECS));
        let mut open = self.open.lock().expect("sessions lock");
        open.retain(|_, (_, until)| *until > now);
        if open.len() >= self.cap
            && let Some(oldest) = open.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k)
        {
            open.remove(&oldest);
        }
        open.insert(token_digest(&id), (role, until));
        Some(id)
    }

    /// The role of the open session `id`.
    pub(super) fn role_of(&self, id: &str) -> Option<Role> {
        let open = self.open.lock().expect("sessions lock");
        open.get(&token_digest(id))
            .filter(|(_, until)| *until > Instant::now())
            .map(|(role, _)| *role)
    }

    fn close(&self, id: &str) {
        self.open
            .lock()
            .expect("sessions lock")
            .remove(&token_digest(id));
    }
}

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// The dashboard's routes (public: the page has no data; the API behind it
/// checks the session).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route("/ui", get(|| async { Redirect::to("/") }))
        .route(
            "/ui/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { page(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
}

/// A static part of the page, with headers that keep it from being framed,
/// from running script of other origins, and from leaking its address.
fn page(body: &'static str, media: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, media),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // `same-origin`, not `no-referrer`: with the latter browsers send
            // `Origin: null` on the page's own form posts.
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The session id in the cookie, if the request has exactly one (several are
/// refused: one may have been planted for another path by a page of another
/// port of the same host).
pub(super) fn session_id(headers: &HeaderMap) -> Option<&str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = std::str::from_utf8(pair).ok()?;
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then_some(value)
        });
    let first = found.next()?;
    (found.next().is_none() && !first.is_empty()).then_some(first)
}

/// A request from another site's page: the browser says so
/// (`Sec-Fetch-Site`), or its `Origin` is not this server.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_none() || origin_host != host
}

fn cookie(value: &str, max_age: u32, headers: &HeaderMap) -> HeaderValue {
    // Behind a TLS proxy: it says so, or the page's own origin does.
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"))
        || headers
            .get(header::ORIGIN)
            .is_some_and(|o| o.as_bytes().starts_with(b"https://"));
    let text = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn forbidden_origin() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "cross-site",
        "this form may only be posted from weir's own page",
    )
}

/// `POST /ui/login`, a form with `token`: sets the session and goes to the page.
async fn login(State(state): State<AppState>, headers: HeaderMap, body: String) -> Response {
    if cross_site(&headers) {
        return forbidden_origin().into_response();
    }
    let token = form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let Some(role) = state.tokens.role_of(&token) else {
        return Redirect::to("/?login=failed").into_response();
    };
    let Some(id) = state.sessions.open(role) else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-randomness",
            "the system gave no random bytes for a session id; try again",
        )
        .into_response();
    };
    let mut response = Redirect::to("/").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie(&id, SESSION_SECS, &headers));
    response
}

/// `POST /ui/logout`: ends the session.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if cross_site(&headers) {
        return forbidden_origin().into_response();
    }
    if let Some(id) = session_id(&headers) {
        state.sessions.close(id);
    }
    let mut response = Redirect::to("/").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, &headers));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn the_session_comes_from_one_cookie_only() {
        let h = headers(&[("cookie", "a=b; weir_session=id-123; c=d")]);
        assert_eq!(session_id(&h), Some("id-123"));
        let h = headers(&[("cookie", "weir_sessionx=no"), ("cookie", "weir_session=")]);
        assert_eq!(session_id(&h), None);
        assert_eq!(session_id(&HeaderMap::new()), None);
        // Two (one planted for a longer path): neither.
        let h = headers(&[("cookie", "weir_session=planted; weir_session=mine")]);
        assert_eq!(session_id(&h), None);
        // A cookie of another service with bytes that are not ASCII spoils nothing.
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"other=\xc3\xa9; weir_session=id-9").unwrap(),
        );
        assert_eq!(session_id(&h), Some("id-9"));
    }

    #[test]
    fn sessions_open_answer_their_role_and_close() {
        let sessions = Sessions::default();
        let admin = sessions.open(Role::Admin).unwrap();
        let viewer = sessions.open(Role::Viewer).unwrap();
        assert_eq!(admin.len(), 64);
        assert_ne!(admin, viewer);
        assert_eq!(sessions.role_of(&admin), Some(Role::Admin));
        assert_eq!(sessions.role_of(&viewer), Some(Role::Viewer));
        assert_eq!(sessions.role_of("guess"), None);
        sessions.close(&admin);
        assert_eq!(sessions.role_of(&admin), None);
        assert_eq!(sessions.role_of(&viewer), Some(Role::Viewer));
    }

    #[test]
    fn past_the_cap_the_oldest_session_ends() {
        let sessions = Sessions {
            cap: 3,
            ..Sessions::default()
        };
        let ids: Vec<String> = (0..4)
            .map(|_| sessions.open(Role::Viewer).unwrap())
            .collect();
        assert_eq!(sessions.open.lock().unwrap().len(), 3);
        assert_eq!(sessions.role_of(&ids[0]), None, "the oldest went");
        for id in &ids[1..] {
            assert_eq!(sessions.role_of(id), Some(Role::Viewer));
        }
    }

    #[test]
    fn another_sites_origin_is_cross_site() {
        let same = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(!cross_site(&same));
        let other = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
        ]);
        assert!(cross_site(&other));
        let opaque = headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]);
        assert!(cross_site(&opaque));
        assert!(!cross_site(&headers(&[("host", "127.0.0.1:8080")])));
        let fetch = |site| headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", site)]);
        assert!(!cross_site(&fetch("same-origin")));
        assert!(cross_site(&fetch("same-site")));
        assert!(cross_site(&fetch("cross-site")));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_https() {
        let plain = cookie("t", 60, &HeaderMap::new());
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        let tls = cookie("t", 60, &headers(&[("x-forwarded-proto", "https")]));
        assert!(tls.to_str().unwrap().ends_with("; Secure"));
        let origin = cookie("t", 60, &headers(&[("origin", "https://weir.example.com")]));
        assert!(origin.to_str().unwrap().ends_with("; Secure"));
    }
}
