//! Request records: create/update, show, list, state changes, delete.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{parse_id, AdminState, ApiError, ApiResult, Failure};
use crate::keys::{fingerprint, parse_authorized_keys, KeysError};
use crate::store::{hash_key, validate_filename, validate_key, Record, State as ReqState};

/// Turns an authorized_keys problem into the reference's failures.
pub(crate) fn keys_failures(e: KeysError) -> Vec<Failure> {
    match e {
        KeysError::Invalid(lines) => lines
            .into_iter()
            .map(|l| Failure {
                line: Some(l.line),
                ..Failure::new(
                    "SSH_KEYS:INVALID",
                    format!("line {}: {}", l.line, l.message),
                )
                .value(l.value)
            })
            .collect(),
        KeysError::Empty => vec![Failure::new(
            "SSH_KEYS:EMPTY",
            "the SSH keys file contains no public key",
        )],
        KeysError::TooLarge(m) => vec![Failure::new("SSH_KEYS:TOO_LARGE", m)],
    }
}

fn state_failure(value: &str) -> Failure {
    Failure::new("STATE:INVALID", format!("invalid state \"{value}\""))
        .value(value)
        .expected(
            ReqState::ALL
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
        )
}

fn rfc3339(t: OffsetDateTime) -> Value {
    t.format(&Rfc3339).map(Value::String).unwrap_or(Value::Null)
}

/// The operator's view of a record: everything but the key.
pub(crate) fn view(state: &AdminState, r: &Record) -> Value {
    let g = &state.gateway;
    let now = OffsetDateTime::now_utc();
    let user = Record::user_name(r.id);
    let shared = r.access_at(now).map(|a| r.visible_name(a));
    let keys: Vec<Value> = g
        .keys_of(r)
        .iter()
        .map(|k| {
            json!({
                "fingerprint": fingerprint(&k.key),
                "algorithm": k.key.algorithm().as_str(),
                "comment": k.key.comment().as_str_lossy(),
            })
        })
        .collect();
    let size = |p: std::path::PathBuf| std::fs::metadata(p).ok().map(|m| m.len());
    let activity = g.activity(r.id);
    let last_write = activity.last_write.load(Ordering::Relaxed);
    let peers: Vec<String> = g.peers_of(r.id).iter().map(|p| p.to_string()).collect();
    json!({
        "id": r.id,
        "filename": r.filename,
        "state": r.state.as_str(),
        "sftp_user": user,
        "shared_file": shared,
        "hostname": state.public_host,
        "sftp_port": state.public_port,
        "sample_command": format!("sftp -P {} {}@{}", state.public_port, user, state.public_host),
        "expires_at": r.expires_at.map(rfc3339),
        "operator_expires_at": r.operator_expires_at.map(rfc3339),
        "ssh_keys": keys,
        "filesize": size(g.store.upload_path(r.id)).unwrap_or(0),
        "upgraded_filesize": size(g.store.upgraded_path(r.id)),
        "last_write_at": (last_write > 0).then(|| OffsetDateTime::from_unix_timestamp(last_write).ok().map(rfc3339)),
        "writing": activity.writers.load(Ordering::Relaxed) > 0,
        "sessions": peers.len(),
        "peers": peers,
        "created_at": rfc3339(r.created_at),
        "updated_at": rfc3339(r.updated_at),
    })
}

fn ok_one(state: &AdminState, r: &Record) -> Json<Value> {
    Json(json!({"failures": [], "request": view(state, r)}))
}

pub async fn list(State(state): State<Arc<AdminState>>) -> Json<Value> {
    let all: Vec<Value> = state
        .gateway
        .store
        .list()
        .iter()
        .map(|r| view(&state, r))
        .collect();
    Json(json!({"failures": [], "requests": all}))
}

pub async fn show(
    State(state): State<Arc<AdminState>>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    let r = state
        .gateway
        .store
        .get(id)
        .ok_or_else(|| ApiError::not_found(id))?;
    Ok(ok_one(&state, &r))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    filename: Option<String>,
    key: Option<String>,
    state: Option<String>,
    ssh_keys: Option<String>,
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The body of a JSON route: a size or transport problem is a failure like any other.
pub(crate) type JsonBody = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn parse_json<T: serde::de::DeserializeOwned>(body: JsonBody) -> ApiResult<T> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Failure::new("BODY:TOO_LARGE", "the body is larger than 1 MiB"),
            )
        } else {
            ApiError::bad("BODY:INVALID", e.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(
            "BODY:INVALID_JSON",
            format!("the body is not valid JSON for this route: {e}"),
        )
    })
}

/// Writes a record on a blocking thread (it fsyncs) and asks the sweeper to recheck.
pub(crate) async fn save(state: &AdminState, record: Record) -> ApiResult<()> {
    let store = state.gateway.store.clone();
    tokio::task::spawn_blocking(move || store.put(record))
        .await
        .map_err(ApiError::storage)?
        .map_err(ApiError::storage)?;
    state.gateway.recheck_now();
    Ok(())
}

fn check_transition(state: &AdminState, id: u64, to: ReqState) -> Result<(), Failure> {
    if to == ReqState::Done && !state.gateway.store.upgraded_path(id).is_file() {
        return Err(Failure::new(
            "UPGRADED:MISSING",
            "a request can only be done once its upgraded file was uploaded (PUT /v1/requests/{id}/upgraded)",
        ));
    }
    Ok(())
}

pub async fn put(
    State(state): State<Arc<AdminState>>,
    Path(raw): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    let body: PutBody = parse_json(body)?;
    let existing = state.gateway.store.get(id);
    let mut failures = Vec::new();

    let filename = body
        .filename
        .or_else(|| existing.as_ref().map(|r| r.filename.clone()));
    match &filename {
        None => failures.push(Failure::new(
            "FILENAME:REQUIRED",
            "filename is required to create a request",
        )),
        Some(f) => {
            if let Err(e) = validate_filename(f) {
                failures.push(
                    Failure::new("FILENAME:INVALID", e.to_string())
                        .value(f.chars().take(40).collect::<String>()),
                );
            }
        }
    }
    let key_sha256 = match (body.key.as_deref(), &existing) {
        (Some(k), _) => match validate_key(k) {
            Ok(()) => Some(hash_key(k)),
            Err(e) => {
                failures.push(Failure::new("KEY:INVALID", e));
                None
            }
        },
        (None, Some(r)) => Some(r.key_sha256.clone()),
        (None, None) => {
            failures.push(Failure::new(
                "KEY:REQUIRED",
                "key is required to create a request",
            ));
            None
        }
    };
    let new_state = match body.state.as_deref() {
        None => existing.as_ref().map_or(ReqState::Draft, |r| r.state),
        Some(s) => ReqState::parse(s).unwrap_or_else(|| {
            failures.push(state_failure(s));
            ReqState::Draft
        }),
    };
    let ssh_keys = match body.ssh_keys {
        Some(text) => match parse_authorized_keys(&text) {
            Ok(_) => text,
            Err(e) => {
                failures.extend(keys_failures(e));
                String::new()
            }
        },
        None => existing
            .as_ref()
            .map(|r| r.ssh_keys.clone())
            .unwrap_or_default(),
    };
    // An expiry the operator sets is also the ceiling for the customer's own calls; one the
    // operator leaves alone keeps both as they were (a customer's expiry included).
    let (expires_at, operator_expires_at) = match body.expires_at {
        None => existing
            .as_ref()
            .map_or((None, None), |r| (r.expires_at, r.operator_expires_at)),
        Some(None) => (None, None),
        Some(Some(t)) => match OffsetDateTime::parse(&t, &Rfc3339) {
            Ok(t) => (Some(t), Some(t)),
            Err(_) => {
                failures.push(
                    Failure::new(
                        "EXPIRES_AT:INVALID",
                        "expires_at must be an RFC 3339 time or null",
                    )
                    .value(t),
                );
                (None, None)
            }
        },
    };
    if failures.is_empty() && existing.as_ref().is_none_or(|r| r.state != new_state) {
        if let Err(f) = check_transition(&state, id, new_state) {
            failures.push(f);
        }
    }
    if !failures.is_empty() {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            failures,
        });
    }
    let now = OffsetDateTime::now_utc();
    let record = Record {
        id,
        filename: filename.unwrap_or_default(),
        state: new_state,
        key_sha256: key_sha256.unwrap_or_default(),
        ssh_keys,
        expires_at,
        operator_expires_at,
        created_at: existing.as_ref().map_or(now, |r| r.created_at),
        updated_at: now,
    };
    audit_change(&record, existing.as_ref());
    save(&state, record.clone()).await?;
    Ok(ok_one(&state, &record))
}

fn audit_change(new: &Record, old: Option<&Record>) {
    match old {
        None => {
            tracing::info!(target: "audit", event = "request-created", request = new.id, state = new.state.as_str(), "created")
        }
        Some(o) if o.state != new.state => tracing::info!(
            target: "audit",
            event = "state-changed",
            request = new.id,
            from = o.state.as_str(),
            to = new.state.as_str(),
            "state changed"
        ),
        Some(_) => {
            tracing::info!(target: "audit", event = "request-updated", request = new.id, "updated")
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateBody {
    state: String,
}

pub async fn set_state(
    State(state): State<Arc<AdminState>>,
    Path(raw): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    let body: StateBody = parse_json(body)?;
    let existing = state
        .gateway
        .store
        .get(id)
        .ok_or_else(|| ApiError::not_found(id))?;
    let to = ReqState::parse(&body.state)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, state_failure(&body.state)))?;
    check_transition(&state, id, to).map_err(|f| ApiError::new(StatusCode::CONFLICT, f))?;
    let mut record = existing.clone();
    record.state = to;
    record.updated_at = OffsetDateTime::now_utc();
    audit_change(&record, Some(&existing));
    save(&state, record.clone()).await?;
    Ok(ok_one(&state, &record))
}

#[derive(Deserialize)]
pub struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

pub async fn delete(
    State(state): State<Arc<AdminState>>,
    Path(raw): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    let Query(q) =
        query.map_err(|_| ApiError::bad("QUERY:INVALID", "purge must be true or false"))?;
    // Without a record, a purge still removes what a delete without purge left behind
    // (the answer's `request` is then null).
    let record = state.gateway.store.get(id);
    if record.is_none() && !q.purge {
        return Err(ApiError::not_found(id));
    }
    let view = record.map(|r| view(&state, &r));
    let store = state.gateway.store.clone();
    let deleted = tokio::task::spawn_blocking(move || store.delete(id, q.purge))
        .await
        .map_err(ApiError::storage)?
        .map_err(ApiError::storage)?;
    if !deleted {
        return Err(ApiError::not_found(id));
    }
    tracing::info!(target: "audit", event = "request-deleted", request = id, purge = q.purge, "deleted");
    state.gateway.forget(id);
    state.gateway.recheck_now();
    Ok(Json(json!({"failures": [], "request": view})))
}
