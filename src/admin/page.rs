//! A small operator status page at `/`: server-rendered HTML, no build step. The admin token
//! is entered once in a login form, which answers with a session cookie (never the token:
//! see session.rs); failed logins are throttled per source (login_throttle.rs). Every page
//! response forbids framing and everything but its own inline style. The page refreshes
//! itself every few seconds to show uploads in progress.

use crate::ratelog::Verdict;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Form};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{AdminState, ApiError};
use crate::store::{PageQuery, Record};

const COOKIE: &str = "sftpgate_session";

/// What the page needs: its inline `<style>`, and forms posted back to itself.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// Added to every status page response (`/`, `/login`, `/logout`).
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// The last byte count seen per request, to show a transfer rate between refreshes.
#[derive(Default)]
pub struct Samples(Mutex<HashMap<u64, (u64, Instant)>>);

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The session ids the request's cookies carry.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn logged_in(state: &AdminState, headers: &HeaderMap) -> bool {
    cookies(headers).any(|id| state.sessions.valid(id))
}

const STYLE: &str =
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}\
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#eee}\
.writing{color:#06c;font-weight:bold}.err{color:#b00}";

fn login_form(error: Option<&str>) -> Html<String> {
    let error = error
        .map(|e| format!("<p class=\"err\">{}</p>", escape(e)))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sftpgate</title><style>{STYLE}</style></head><body>\
         <h1>sftpgate</h1>{error}<form method=\"post\" action=\"/login\">\
         <label>Admin token <input type=\"password\" name=\"token\" id=\"token\" autofocus></label> \
         <button type=\"submit\" id=\"login\">Log in</button></form></body></html>"
    ))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Requests shown per page: the page refreshes every few seconds, so it reads one bounded
/// page, never the whole store.
const PAGE_ROWS: usize = 100;

/// `/?after=<id>`: the page of requests after that id.
#[derive(Deserialize)]
pub struct PageAt {
    after: Option<u64>,
}

pub async fn index(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    // A bad `after` shows the first page.
    at: Result<Query<PageAt>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !logged_in(&state, &headers) {
        return login_form(None).into_response();
    }
    let g = &state.gateway;
    let now = OffsetDateTime::now_utc();
    let mut rows = String::new();
    let after = at.ok().and_then(|Query(a)| a.after).unwrap_or(0);
    let query = PageQuery {
        after,
        limit: PAGE_ROWS,
        state: None,
        updated_since: None,
    };
    let (records, next) = match g.page(&query).await {
        Ok(page) => page,
        Err(e) => return ApiError::storage(e).into_response(),
    };
    for r in &records {
        rows.push_str(&row(&state, r, now));
    }
    if records.is_empty() {
        rows.push_str("<tr><td colspan=\"7\">no requests</td></tr>");
    }
    let shown = match (records.first(), records.last()) {
        (Some(a), Some(b)) => format!("Requests {} to {} (by id)", a.id, b.id),
        _ => "Requests: none".into(),
    };
    let mut links = String::new();
    if after > 0 {
        links.push_str("<a href=\"/\" id=\"first\">first page</a> ");
    }
    if let Some(next) = next {
        links.push_str(&format!(
            "<a href=\"/?after={next}\" id=\"next\">next page</a>"
        ));
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"3\">\
         <title>sftpgate</title><style>{STYLE}</style></head><body><h1>sftpgate</h1>\
         <p>{shown}. Live sessions on this node: {}. Updated {}.</p>\
         <table id=\"requests\"><tr><th>Request</th><th>File</th><th>State</th><th>Uploaded</th>\
         <th>Transfer now</th><th>Clients</th><th>Access expires</th></tr>{rows}</table><p>{links}</p>\
         <form method=\"post\" action=\"/logout\"><button type=\"submit\">Log out</button></form></body></html>",
        g.metrics.sessions_current.load(Ordering::Relaxed),
        now.format(&Rfc3339).unwrap_or_default(),
    ))
    .into_response()
}

fn row(state: &AdminState, r: &Record, now: OffsetDateTime) -> String {
    let g = &state.gateway;
    let size = std::fs::metadata(g.upload_path(r.id))
        .map(|m| m.len())
        .unwrap_or(0);
    let activity = g.activity(r.id);
    let written = activity.bytes_written.load(Ordering::Relaxed);
    let live = if activity.writers.load(Ordering::Relaxed) > 0 {
        let mut samples = state.samples.0.lock().unwrap_or_else(|p| p.into_inner());
        let rate = match samples.insert(r.id, (written, Instant::now())) {
            Some((before, at)) if at.elapsed().as_secs_f64() > 0.2 => {
                format!(
                    ", {}/s",
                    mib(
                        (written.saturating_sub(before) as f64 / at.elapsed().as_secs_f64()) as u64
                    )
                )
            }
            _ => String::new(),
        };
        format!(
            "<span class=\"writing\">uploading: {} received{rate}</span>",
            mib(written)
        )
    } else {
        "-".into()
    };
    let peers: Vec<String> = g.peers_of(r.id).iter().map(|p| p.to_string()).collect();
    let expires = match r.expires_at {
        Some(t) if t <= now => "expired".into(),
        Some(t) => t.format(&Rfc3339).unwrap_or_default(),
        None => "-".into(),
    };
    format!(
        "<tr id=\"request-{id}\"><td>{id}</td><td>{file}</td><td>{state}</td><td>{size}</td><td>{live}</td><td>{peers}</td><td>{expires}</td></tr>",
        id = r.id,
        file = escape(&r.filename),
        state = r.state.as_str(),
        size = mib(size),
        peers = escape(&peers.join(", ")),
        expires = escape(&expires),
    )
}

#[derive(Deserialize)]
pub struct Login {
    token: String,
}

/// Where the request came from; the listener always says (unspecified only if not).
type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

fn source(peer: Peer) -> IpAddr {
    peer.map(|Extension(ConnectInfo(a))| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

pub async fn login(
    State(state): State<Arc<AdminState>>,
    peer: Peer,
    form: Result<Form<Login>, axum::extract::rejection::FormRejection>,
) -> Response {
    let ip = source(peer);
    let now = Instant::now();
    if let Some(wait) = state.logins.blocked(ip, now) {
        let verdict = state.throttled_log.lock().map(|mut b| b.check());
        if let Ok(Verdict::Log { suppressed }) = verdict {
            tracing::warn!(target: "audit", event = "page-login-throttled", peer = %ip, suppressed);
        }
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            login_form(Some(
                "too many failed logins from this address: try again later",
            )),
        )
            .into_response();
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
        return resp;
    }
    let Ok(Form(form)) = form else {
        return (
            StatusCode::BAD_REQUEST,
            login_form(Some("enter the admin token")),
        )
            .into_response();
    };
    if !bool::from(form.token.trim().as_bytes().ct_eq(state.token.as_bytes())) {
        state.logins.failed(ip, now);
        tracing::warn!(target: "audit", event = "page-login-failed", peer = %ip);
        return (
            StatusCode::UNAUTHORIZED,
            login_form(Some("that token is not valid")),
        )
            .into_response();
    }
    state.logins.succeeded(ip);
    tracing::info!(target: "audit", event = "page-login", peer = %ip);
    let secure = if state.page_https { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        state.sessions.create(),
        state.sessions.ttl().as_secs(),
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/".to_string()),
        ],
    )
        .into_response()
}

/// Revokes the session server-side (a copy of the cookie stops working too) and clears it.
pub async fn logout(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    for id in cookies(&headers) {
        state.sessions.revoke(id);
    }
    let secure = if state.page_https { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/".to_string()),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<b>\"x\"&'y'</b>"),
            "&lt;b&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/b&gt;"
        );
    }
}
