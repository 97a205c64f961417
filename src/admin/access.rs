//! `POST /database/v1/request_sftp_access`: the customer-facing call of the reference API.
//! Authenticated by the request's own secret key (not the operator token), it replaces the
//! request's authorized keys with the uploaded file and opens SFTP access for a while.
//! Like the reference, it always answers 200 with a JSON body whose `failures` list is
//! empty on success.
//!
//! The whole decision (key, state, keys file, expiry) is taken in one `Gateway::change`,
//! from the record as it is then: a call racing an operator's cancel or delete either
//! comes before it (and is undone by it) or sees its result, never writes over it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::header;
use axum::Json;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::form::{parse_access_form, AccessParams as Params};
use super::requests::keys_failures;
use super::{AdminState, ApiError, Failure};
use crate::keys::{parse_authorized_keys, MAX_BYTES};
use crate::limits::{source_of, FailureCounter, FailurePolicy};
use crate::store::{hash_key, Access, Decision, Record, State as ReqState};

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
        Err(Failure::new("KEY:THROTTLED", message))
    }

    /// Counts a wrong key (or an unknown request) from `ip` and logs it; the failure to
    /// answer.
    pub(super) fn wrong_key(&self, id: u64, ip: IpAddr) -> Failure {
        self.failed(id, ip);
        tracing::info!(target: "audit", event = "access-refused", request = id, ip = %ip, "wrong key or unknown request");
        Failure::new("KEY:INVALID", "unknown request or wrong key")
    }
}

/// Whether `key` is the key of `record`. An unknown request (`None`) and a wrong key look
/// the same and cost the same hash, so that neither can be probed.
pub(super) fn key_matches(record: Option<&Record>, key: &str) -> bool {
    match record {
        Some(r) => r.key_matches(key),
        None => {
            let _ = hash_key(key);
            false
        }
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
pub(super) fn missing(params: &[(&str, bool)]) -> Vec<Failure> {
    params
        .iter()
        .filter(|(_, given)| !given)
        .map(|(name, _)| {
            Failure::new(
                &format!("{}:MISSING", name.to_ascii_uppercase()),
                format!("the {name} parameter is required"),
            )
        })
        .collect()
}

/// The `request` parameter: a request id.
pub(super) fn request_id(raw: &str) -> Result<u64, Failure> {
    raw.parse::<u64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        Failure::new("REQUEST:INVALID", "request must be a request id")
            .value(raw.chars().take(40).collect::<String>())
    })
}

fn reply(failures: Vec<Failure>) -> Json<Value> {
    Json(json!({ "failures": failures }))
}

fn malformed(message: impl Into<String>) -> Json<Value> {
    reply(vec![Failure::new("REQUEST:MALFORMED", message)])
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

pub async fn request_sftp_access(
    State(state): State<Arc<AdminState>>,
    req: Request,
) -> Json<Value> {
    let ip = client_addr(&req).ip();
    let p = match params(&state, req).await {
        Ok(p) => p,
        Err(e) => return malformed(e),
    };
    let missing = missing(&[
        ("request", p.request.is_some()),
        ("key", p.key.is_some()),
        ("ssh_keys", p.ssh_keys.is_some()),
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
        let matched = key_matches(record, &key);
        match record {
            Some(r) if matched => match grant(r, keys_file, now, ttl) {
                Ok((updated, granted)) => (Decision::Put(updated), Outcome::Granted(granted)),
                Err(failures) => (Decision::Keep, Outcome::Refused(failures)),
            },
            _ => (Decision::Keep, Outcome::WrongKey),
        }
    });
    let granted = match change.await {
        Err(e) => return reply(ApiError::storage(e).failures),
        Ok((_, Outcome::WrongKey)) => return reply(vec![state.throttle.wrong_key(id, ip)]),
        Ok((_, Outcome::Refused(failures))) => {
            state.throttle.succeeded(id, ip);
            return reply(failures);
        }
        Ok((_, Outcome::Granted(granted))) => {
            state.throttle.succeeded(id, ip);
            granted
        }
    };
    let user = Record::user_name(id);
    tracing::info!(target: "audit", event = "access-granted", request = id, keys = granted.keys, "sftp access opened");
    Json(json!({
        "failures": [],
        "warnings": granted.warnings,
        "request": {
            "hostname": state.public_host,
            "sftp_port": state.public_port,
            "sftp_user": user,
            "shared_file": granted.shared_file,
            "request_id": id,
            "sample_command": format!("sftp -P {} {}@{}", state.public_port, user, state.public_host),
            "expires_at": granted.expires_at.format(&Rfc3339).ok(),
        }
    }))
}

/// What a call decided, taken out of the change.
enum Outcome {
    WrongKey,
    /// The right key, but no access: the failures to answer.
    Refused(Vec<Failure>),
    Granted(Granted),
}

/// What the answer to a granted call tells.
struct Granted {
    shared_file: String,
    expires_at: OffsetDateTime,
    keys: usize,
    warnings: Vec<Value>,
}

/// `ACCESS:EXPIRED`: the operator's `expires_at` on `record` has passed.
pub(super) fn closed_by_operator(record: &Record) -> Failure {
    Failure::new(
        "ACCESS:EXPIRED",
        "the operator closed access to this request; only the operator can reopen it",
    )
    .value(
        record
            .operator_expires_at
            .and_then(|t| t.format(&Rfc3339).ok()),
    )
}

/// The record that opening access to `record` (whose key matched) with `keys_file` at
/// `now` makes, or why access is not opened, checked in the order the reference does.
fn grant(
    record: &Record,
    keys_file: Vec<u8>,
    now: OffsetDateTime,
    ttl: time::Duration,
) -> Result<(Record, Granted), Vec<Failure>> {
    let access = match record.state {
        ReqState::Draft | ReqState::Done => record.state,
        other => {
            return Err(vec![Failure::new(
                "STATE:INVALID",
                format!(
                    "SFTP access needs the request in draft or done, it is {}",
                    other.as_str()
                ),
            )
            .value(other.as_str())
            .expected(vec!["draft".into(), "done".into()])])
        }
    };
    if keys_file.len() > MAX_BYTES {
        return Err(vec![Failure::new(
            "SSH_KEYS:TOO_LARGE",
            format!(
                "{} bytes, at most {MAX_BYTES} are accepted",
                keys_file.len()
            ),
        )]);
    }
    let Ok(text) = String::from_utf8(keys_file) else {
        return Err(vec![Failure::new(
            "SSH_KEYS:INVALID",
            "the SSH keys file is not UTF-8 text",
        )]);
    };
    let keys = parse_authorized_keys(&text).map_err(keys_failures)?;
    let warnings: Vec<Value> = keys
        .iter()
        .flat_map(|k| {
            k.options.ignored.iter().map(move |o| {
                json!({"line": k.line, "option": o, "message": format!("line {}: option {o} is not honoured by this server and was ignored", k.line)})
            })
        })
        .collect();
    let Some(expires_at) = record.customer_expiry(now, ttl) else {
        return Err(vec![closed_by_operator(record)]);
    };
    let mut updated = record.clone();
    updated.ssh_keys = text;
    updated.expires_at = Some(expires_at);
    updated.updated_at = now;
    let granted = Granted {
        shared_file: record.visible_name(access.access().unwrap_or(Access::Upload)),
        expires_at,
        keys: keys.len(),
        warnings,
    };
    Ok((updated, granted))
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
