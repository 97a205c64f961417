//! `POST /database/v1/request_sftp_access`: the customer-facing call of the reference API.
//! Authenticated by the request's own secret key (not the operator token), it replaces the
//! request's authorized keys with the uploaded file and opens SFTP access for a while.
//! Like the reference, it always answers 200 with a JSON body whose `failures` list is
//! empty on success.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Request, State};
use axum::http::header;
use axum::Json;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::form::{parse_access_form, AccessParams as Params};
use super::requests::{keys_failures, save};
use super::{AdminState, Failure};
use crate::keys::{parse_authorized_keys, MAX_BYTES};
use crate::store::{hash_key, Access, Record, State as ReqState};

/// Wrong keys allowed per request within `WINDOW` before further attempts are refused.
const MAX_FAILURES: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);
/// Tracked requests at most; beyond that the oldest entries are forgotten.
const MAX_TRACKED: usize = 10_000;

/// Counts wrong keys per request id, to slow down guessing.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<u64, (u32, Instant)>>,
}

impl Throttle {
    fn blocked(&self, id: u64) -> bool {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&id)
            .is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < WINDOW)
    }

    fn failed(&self, id: u64) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, since)| since.elapsed() < WINDOW);
        }
        let entry = map.entry(id).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    fn succeeded(&self, id: u64) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
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
    let p = match params(&state, req).await {
        Ok(p) => p,
        Err(e) => return malformed(e),
    };
    let mut missing = Vec::new();
    for (name, given) in [
        ("request", p.request.is_some()),
        ("key", p.key.is_some()),
        ("ssh_keys", p.ssh_keys.is_some()),
    ] {
        if !given {
            missing.push(Failure::new(
                &format!("{}:MISSING", name.to_ascii_uppercase()),
                format!("the {name} parameter is required"),
            ));
        }
    }
    if !missing.is_empty() {
        return reply(missing);
    }
    let (raw_id, key, keys_file) = (
        p.request.unwrap_or_default(),
        p.key.unwrap_or_default(),
        p.ssh_keys.unwrap_or_default(),
    );
    let Some(id) = raw_id.parse::<u64>().ok().filter(|id| *id > 0) else {
        return reply(vec![Failure::new(
            "REQUEST:INVALID",
            "request must be a request id",
        )
        .value(raw_id.chars().take(40).collect::<String>())]);
    };
    if state.throttle.blocked(id) {
        return reply(vec![Failure::new(
            "KEY:THROTTLED",
            "too many wrong keys for this request: try again in a minute",
        )]);
    }
    let record = match state.gateway.store.get(id) {
        Some(r) if r.key_matches(&key) => r,
        found => {
            // Unknown request and wrong key look the same, and cost the same hash, so
            // neither can be probed.
            if found.is_none() {
                let _ = hash_key(&key);
            }
            state.throttle.failed(id);
            tracing::info!(target: "audit", event = "access-refused", request = id, "wrong key or unknown request");
            return reply(vec![Failure::new(
                "KEY:INVALID",
                "unknown request or wrong key",
            )]);
        }
    };
    state.throttle.succeeded(id);
    let access = match record.state {
        ReqState::Draft | ReqState::Done => record.state,
        other => {
            return reply(vec![Failure::new(
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
        return reply(vec![Failure::new(
            "SSH_KEYS:TOO_LARGE",
            format!(
                "{} bytes, at most {MAX_BYTES} are accepted",
                keys_file.len()
            ),
        )]);
    }
    let Ok(text) = String::from_utf8(keys_file) else {
        return reply(vec![Failure::new(
            "SSH_KEYS:INVALID",
            "the SSH keys file is not UTF-8 text",
        )]);
    };
    let keys = match parse_authorized_keys(&text) {
        Ok(k) => k,
        Err(e) => return reply(keys_failures(e)),
    };
    let warnings: Vec<Value> = keys
        .iter()
        .flat_map(|k| {
            k.options.ignored.iter().map(move |o| {
                json!({"line": k.line, "option": o, "message": format!("line {}: option {o} is not honoured by this server and was ignored", k.line)})
            })
        })
        .collect();
    let now = OffsetDateTime::now_utc();
    let expires_at = now + state.access_ttl;
    let mut updated = record.clone();
    updated.ssh_keys = text;
    updated.expires_at = Some(expires_at);
    updated.updated_at = now;
    if let Err(e) = save(&state, updated).await {
        return reply(e.failures);
    }
    let user = Record::user_name(id);
    let shared = record.visible_name(access.access().unwrap_or(Access::Upload));
    tracing::info!(target: "audit", event = "access-granted", request = id, keys = keys.len(), "sftp access opened");
    Json(json!({
        "failures": [],
        "warnings": warnings,
        "request": {
            "hostname": state.public_host,
            "sftp_port": state.public_port,
            "sftp_user": user,
            "shared_file": shared,
            "request_id": id,
            "sample_command": format!("sftp -P {} {}@{}", state.public_port, user, state.public_host),
            "expires_at": expires_at.format(&Rfc3339).ok(),
        }
    }))
}
