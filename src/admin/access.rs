//! `POST /database/v1/request_sftp_access`: the customer-facing call of the reference API.
//! Authenticated by the request's own secret key (not the operator token), it replaces the
//! request's authorized keys with the uploaded file and opens SFTP access for a while.
//! Like the reference, it always answers 200 with a JSON body whose `failures` list is
//! empty on success.
//!
//! The whole decision (key, state, keys file, expiry: `merge::customer_access`, a pure
//! function) is taken in one `Gateway::change`, from the record as it is then: a call
//! racing an operator's cancel or delete either comes before it (and is undone by it) or
//! sees its result, never writes over it. This handler parses, throttles and answers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::header;
use axum::Json;
use time::OffsetDateTime;

use super::form::{parse_access_form, AccessParams as Params};
use super::merge::{customer_access, AccessDecision};
use super::{AdminState, ApiError};
use crate::api::{
    parse_id, sample_command, AccessAnswer, AccessForm, AccessGranted, AccessQuery, Failure, Reason,
};
use crate::limits::{source_of, FailureCounter, FailurePolicy};
use crate::store::{Decision, Record};

/// Wrong keys allowed per request from one source within `WINDOW`; the source is then
/// refused for that request for `BLOCK`. Counted per source so that strangers cannot lock
/// the owner out.
pub const MAX_FAILURES_PER_REQUEST: u32 = 5;
/// Wrong keys allowed from one source across all requests within `WINDOW`, so that one
/// client cannot guess at every request in turn.
pub const MAX_FAILURES_PER_SOURCE: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
pub const BLOCK: Duration = Duration::from_secs(60);
/// (request, source) pairs and sources tracked at most each; the oldest are forgotten.
pub const MAX_TRACKED: usize = 16_384;

/// Why a call is refused before its key is looked at.
enum Throttled {
    Request,
    Source,
}

/// Counts wrong keys per (request, source) and per source, to slow down guessing without
/// letting anyone else's guesses count against the owner's address. A source is the
/// client's address (an IPv6 one cut to its /64, see [`source_of`]).
pub struct Throttle {
    pairs: FailureCounter<(u64, IpAddr)>,
    sources: FailureCounter<IpAddr>,
}

impl Default for Throttle {
    fn default() -> Throttle {
        let policy = |max_failures| FailurePolicy {
            max_failures,
            window: WINDOW,
            block: BLOCK,
            capacity: MAX_TRACKED,
        };
        Throttle {
            pairs: FailureCounter::new(policy(MAX_FAILURES_PER_REQUEST)),
            sources: FailureCounter::new(policy(MAX_FAILURES_PER_SOURCE)),
        }
    }
}

impl Throttle {
    fn blocked(&self, id: u64, ip: IpAddr) -> Option<Throttled> {
        let src = source_of(ip);
        if self.sources.blocked(&src) {
            Some(Throttled::Source)
        } else if self.pairs.blocked(&(id, src)) {
            Some(Throttled::Request)
        } else {
            None
        }
    }

    fn failed(&self, id: u64, ip: IpAddr) {
        let src = source_of(ip);
        self.pairs.failed((id, src));
        self.sources.failed(src);
    }

    /// The right key clears the source's count for that request only: a client holding one
    /// request's key must not be able to reset its count across requests with it.
    pub(super) fn succeeded(&self, id: u64, ip: IpAddr) {
        self.pairs.clear(&(id, source_of(ip)));
    }

    /// `KEY:THROTTLED` while `ip` is refused for request `id`, before its key is looked at.
    pub(super) fn check(&self, id: u64, ip: IpAddr) -> Result<(), Failure> {
        let Some(why) = self.blocked(id, ip) else {
            return Ok(());
        };
        let message = match why {
            Throttled::Request => {
                "too many wrong keys for this request from your address: try again in a minute"
            }
            Throttled::Source => "too many wrong keys from your address: try again in a minute",
        };
        // Debug only: a throttled client may call as often as it likes.
        tracing::debug!(request = id, ip = %ip, "access call throttled");
        Err(Failure::new(Reason::KeyThrottled, message))
    }

    /// Counts a wrong key (or an unknown request) from `ip` and logs it; the failure to
    /// answer.
    pub(super) fn wrong_key(&self, id: u64, ip: IpAddr) -> Failure {
        self.failed(id, ip);
        tracing::info!(target: "audit", event = "access-refused", request = id, ip = %ip, "wrong key or unknown request");
        Failure::new(Reason::KeyInvalid, "unknown request or wrong key")
    }
}

/// The caller's address. The listener is served with its peer addresses; without one
/// (never in `serve`) all callers share one source, which only makes the throttle
/// stricter.
pub(super) fn client_addr(req: &Request) -> SocketAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |c| c.0)
}

/// A `<NAME>:MISSING` failure for each required parameter not given.
pub(super) fn missing(params: &[(Reason, &str, bool)]) -> Vec<Failure> {
    params
        .iter()
        .filter(|(_, _, given)| !given)
        .map(|(reason, name, _)| Failure::new(*reason, format!("the {name} parameter is required")))
        .collect()
}

/// The `request` parameter: a request id ([`parse_id`]).
pub(super) fn request_id(raw: &str) -> Result<u64, Failure> {
    parse_id(raw).ok_or_else(|| {
        Failure::new(Reason::RequestInvalid, "request must be a request id")
            .value(raw.chars().take(40).collect::<String>())
    })
}

fn reply(failures: Vec<Failure>) -> Json<AccessAnswer> {
    Json(AccessAnswer::refused(failures))
}

fn malformed(message: impl Into<String>) -> Json<AccessAnswer> {
    reply(vec![Failure::new(Reason::RequestMalformed, message)])
}

/// Reads the whole body (within the router's body limit) and parses it with the query
/// string (see [`parse_access_form`]).
async fn params(state: &Arc<AdminState>, req: Request) -> Result<Params, String> {
    let query = req.uri().query().map(str::to_owned);
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| e.body_text())?;
    parse_access_form(query.as_deref(), &ctype, body).await
}

#[utoipa::path(
    post,
    path = "/database/v1/request_sftp_access",
    tag = "customer",
    summary = "Open SFTP access (the customer's call)",
    operation_id = "requestSftpAccess",
    description = "The reference API's `request_sftp_access`. Authenticated by the request's own key, not the admin token. `request` and `key` come from the query string or the form (form fields win), the keys file from the form field `ssh_keys`. On success the request's keys are replaced with the uploaded ones and access opens for `--access-ttl`, never past the operator's `expires_at`. Always HTTP 200: the failures are in the body (`REQUEST:MALFORMED`, `REQUEST:MISSING`, `KEY:MISSING`, `SSH_KEYS:MISSING`, `REQUEST:INVALID`, `KEY:THROTTLED`, `KEY:INVALID`, `STATE:INVALID`, `SSH_KEYS:INVALID`, `SSH_KEYS:EMPTY`, `SSH_KEYS:TOO_LARGE`, `ACCESS:EXPIRED`, `STORAGE:UNAVAILABLE`).",
    params(AccessQuery),
    request_body(
        description = "The keys file (and optionally `request` and `key`)",
        content(
            (AccessForm = "multipart/form-data"),
            (AccessForm = "application/x-www-form-urlencoded"),
        ),
    ),
    responses(
        (status = 200, description = "Granted (`failures` empty) or refused (`failures` only)", body = AccessAnswer),
    ),
    security(()),
)]
pub async fn request_sftp_access(
    State(state): State<Arc<AdminState>>,
    req: Request,
) -> Json<AccessAnswer> {
    let ip = client_addr(&req).ip();
    let p = match params(&state, req).await {
        Ok(p) => p,
        Err(e) => return malformed(e),
    };
    let missing = missing(&[
        (Reason::RequestMissing, "request", p.request.is_some()),
        (Reason::KeyMissing, "key", p.key.is_some()),
        (Reason::SshKeysMissing, "ssh_keys", p.ssh_keys.is_some()),
    ]);
    if !missing.is_empty() {
        return reply(missing);
    }
    let (raw_id, key, keys_file) = (
        p.request.unwrap_or_default(),
        p.key.unwrap_or_default(),
        p.ssh_keys.unwrap_or_default(),
    );
    let id = match request_id(&raw_id) {
        Ok(id) => id,
        Err(f) => return reply(vec![f]),
    };
    if let Err(f) = state.throttle.check(id, ip) {
        return reply(vec![f]);
    }
    let (now, ttl) = (OffsetDateTime::now_utc(), state.access_ttl);
    let change = state.gateway.change(id, |record| {
        match customer_access(record, &key, keys_file, now, ttl) {
            AccessDecision::Granted(updated, granted) => (Decision::Put(*updated), Ok(granted)),
            refused => (Decision::Keep, Err(refused)),
        }
    });
    let granted = match change.await {
        Err(e) => return reply(ApiError::storage(e).failures),
        Ok((_, Ok(granted))) => granted,
        Ok((_, Err(AccessDecision::Refused(failures)))) => {
            state.throttle.succeeded(id, ip);
            return reply(failures);
        }
        Ok((_, Err(_))) => return reply(vec![state.throttle.wrong_key(id, ip)]),
    };
    state.throttle.succeeded(id, ip);
    tracing::info!(target: "audit", event = "access-granted", request = id, keys = granted.keys, "sftp access opened");
    Json(AccessAnswer {
        failures: Vec::new(),
        warnings: Some(granted.warnings),
        request: Some(AccessGranted {
            hostname: state.public_host.clone(),
            sftp_port: state.public_port,
            sftp_user: Record::user_name(id),
            shared_file: granted.shared_file,
            request_id: id,
            sample_command: sample_command(&state.public_host, state.public_port, id),
            expires_at: Some(granted.expires_at),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn strangers_do_not_count_against_the_owner() {
        let t = Throttle::default();
        for _ in 0..MAX_FAILURES_PER_REQUEST {
            t.failed(7, ip("127.0.0.1"));
        }
        assert!(matches!(
            t.blocked(7, ip("127.0.0.1")),
            Some(Throttled::Request)
        ));
        assert!(t.blocked(7, ip("127.0.0.2")).is_none());
        assert!(t.blocked(8, ip("127.0.0.1")).is_none());
        // One source guessing across requests hits the per-source cap.
        for id in 100..100 + u64::from(MAX_FAILURES_PER_SOURCE) {
            t.failed(id, ip("10.0.0.1"));
        }
        assert!(matches!(
            t.blocked(9, ip("10.0.0.1")),
            Some(Throttled::Source)
        ));
        // An IPv6 client cannot rotate through its /64 to escape it.
        for n in 0..MAX_FAILURES_PER_SOURCE {
            t.failed(7, ip(&format!("2001:db8::{n:x}")));
        }
        assert!(t.blocked(1, ip("2001:db8::ffff")).is_some());
        assert!(t.blocked(1, ip("2001:db8:0:1::1")).is_none());
    }

    #[test]
    fn a_hundred_thousand_failures_with_fresh_ids_stay_bounded() {
        let t = Throttle::default();
        for n in 0..100_000u64 {
            // A few thousand sources, each guessing at fresh ids.
            let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (n % 4096) as u32));
            t.failed(n + 1, src);
        }
        assert!(t.pairs.tracked() <= MAX_TRACKED, "{}", t.pairs.tracked());
        assert!(t.sources.tracked() <= 4096);
    }
}
