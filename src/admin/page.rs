//! A small operator status page at `/`: server-rendered HTML, no build step. The admin token
//! is entered once in a login form, which answers with a session cookie (never the token:
//! see session.rs); failed logins are throttled per source (login_throttle.rs). Every page
//! response forbids framing and everything but its own inline style. The page refreshes
//! itself every few seconds to show uploads in progress.
//!
//! The HTML is written with maud: its `html!` macro escapes every value put into the page
//! (file names, client addresses, messages), so there is no escaping to forget. maud over
//! askama because the page is three small fragments best read next to the code that fills
//! them: maud checks the markup at compile time in this file, with no template directory
//! and no template language beside Rust. Cookies are read and written with the `cookie`
//! crate (through axum-extra), not split by hand.

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
use axum_extra::extract::cookie::{Cookie, SameSite};
use futures::StreamExt;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::requests::VIEWS_AT_ONCE;
use super::{AdminState, ApiError};
use crate::store::multipart::Object;
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

/// The session ids the request's cookies carry: every `sftpgate_session` of every Cookie
/// header (a browser can send two, from two paths; any live one logs in). Not axum-extra's
/// `CookieJar`, which keeps one cookie per name.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(|c| c.ok())
        .filter(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
}

/// The session cookie's `Set-Cookie` value: `id` for `max_age`, or its removal (an empty
/// value and a max-age of zero).
fn session_cookie(state: &AdminState, id: String, max_age: std::time::Duration) -> String {
    let max_age = time::Duration::try_from(max_age).unwrap_or(time::Duration::MAX);
    let mut c = Cookie::build((COOKIE, id))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .max_age(max_age);
    if state.page_https {
        c = c.secure(true);
    }
    c.build().to_string()
}

fn logged_in(state: &AdminState, headers: &HeaderMap) -> bool {
    cookies(headers).any(|id| state.sessions.valid(&id))
}

const STYLE: &str =
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}\
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#eee}\
.writing{color:#06c;font-weight:bold}.err{color:#b00}";

/// The page's frame: its head (title, inline style, and a refresh when `refresh`) around
/// `body`.
fn page(refresh: bool, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html {
                head {
                    meta charset="utf-8";
                    @if refresh {
                        meta http-equiv="refresh" content="3";
                    }
                    title { "sftpgate" }
                    // A constant of this file, no input in it.
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    h1 { "sftpgate" }
                    (body)
                }
            }
        }
        .into_string(),
    )
}

fn login_form(error: Option<&str>) -> Html<String> {
    page(
        false,
        html! {
            @if let Some(e) = error {
                p class="err" { (e) }
            }
            form method="post" action="/login" {
                label { "Admin token " input type="password" name="token" id="token" autofocus; }
                " "
                button type="submit" id="login" { "Log in" }
            }
        },
    )
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
    let shown = match (records.first(), records.last()) {
        (Some(a), Some(b)) => format!("Requests {} to {} (by id)", a.id, b.id),
        _ => "Requests: none".into(),
    };
    // Through the storage, concurrently and boundedly: on object storage each is a store
    // read and perhaps a HEAD. One that cannot be read shows as 0, as a missing file.
    // The ids collected first: a stream over `records.iter()` with a closure taking
    // `&Record` held across the await makes the handler's future not general enough over
    // lifetimes for axum (rustc 1.95 refuses it).
    let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
    let sizes: Vec<u64> = futures::stream::iter(ids)
        .map(|id| async move {
            g.dump_size(id, Object::Upload)
                .await
                .ok()
                .flatten()
                .unwrap_or(0)
        })
        .buffered(VIEWS_AT_ONCE)
        .collect()
        .await;
    let sessions = g.metrics.sessions_current.load(Ordering::Relaxed);
    let updated = now.format(&Rfc3339).unwrap_or_default();
    page(
        true,
        html! {
            p { (shown) ". Live sessions on this node: " (sessions) ". Updated " (updated) "." }
            table id="requests" {
                tr {
                    th { "Request" } th { "File" } th { "State" } th { "Uploaded" }
                    th { "Transfer now" } th { "Clients" } th { "Access expires" }
                }
                @for (r, size) in records.iter().zip(sizes) {
                    (row(&state, r, size, now))
                }
                @if records.is_empty() {
                    tr { td colspan="7" { "no requests" } }
                }
            }
            p {
                @if after > 0 {
                    a href="/" id="first" { "first page" }
                    " "
                }
                @if let Some(next) = next {
                    a href={ "/?after=" (next) } id="next" { "next page" }
                }
            }
            form method="post" action="/logout" {
                button type="submit" { "Log out" }
            }
        },
    )
    .into_response()
}

fn row(state: &AdminState, r: &Record, size: u64, now: OffsetDateTime) -> Markup {
    let g = &state.gateway;
    let activity = g.activity_if_any(r.id);
    let written = activity
        .as_ref()
        .map_or(0, |a| a.bytes_written.load(Ordering::Relaxed));
    let writing = activity.is_some_and(|a| a.writers.load(Ordering::Relaxed) > 0);
    let mut samples = state.samples.0.lock().unwrap_or_else(|p| p.into_inner());
    let live = if writing {
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
        Some(format!("uploading: {} received{rate}", mib(written)))
    } else {
        // A rate sample is kept only while the request uploads.
        samples.remove(&r.id);
        None
    };
    drop(samples);
    let peers: Vec<String> = g.peers_of(r.id).iter().map(|p| p.to_string()).collect();
    let expires = match r.expires_at {
        Some(t) if t <= now => "expired".into(),
        Some(t) => t.format(&Rfc3339).unwrap_or_default(),
        None => "-".into(),
    };
    html! {
        tr id={ "request-" (r.id) } {
            td { (r.id) }
            td { (r.filename) }
            td { (r.state.as_str()) }
            td { (mib(size)) }
            td {
                @match live {
                    Some(live) => span class="writing" { (live) },
                    None => "-",
                }
            }
            td { (peers.join(", ")) }
            td { (expires) }
        }
    }
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
    let cookie = session_cookie(&state, state.sessions.create(), state.sessions.ttl());
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
        state.sessions.revoke(&id);
    }
    let cookie = session_cookie(&state, String::new(), std::time::Duration::ZERO);
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
    use super::{login_form, Html};

    #[test]
    fn values_are_escaped_by_construction() {
        let Html(page) = login_form(Some("<b>\"x\"&'y'</b>"));
        // Attributes are always double-quoted, so `'` needs no escape.
        assert!(
            page.contains("<p class=\"err\">&lt;b&gt;&quot;x&quot;&amp;'y'&lt;/b&gt;</p>"),
            "{page}"
        );
        assert!(!page.contains("<b>"), "{page}");
    }
}
