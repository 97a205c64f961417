//! Request records: create/update, show, list, state changes, delete. Each change is one
//! `Gateway::change`: what it decides is decided from the record as it is at that moment,
//! so that a customer's `request_sftp_access` racing it cannot undo it.

use std::path::Path as FsPath;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::list_query::parse_list_query;
use super::{parse_id, AdminState, ApiError, ApiResult, Failure};
use crate::gateway::Gateway;
use crate::keys::{fingerprint, parse_authorized_keys, KeysError};
use crate::store::{
    hash_key, validate_filename, validate_key, Decision, Record, State as ReqState, Updated,
    MAX_PEERS_LISTED,
};

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
    let (sessions, peers, nodes) = live_sessions(state, r.id);
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
        "filesize": size(g.upload_path(r.id)).unwrap_or(0),
        "upgraded_filesize": size(g.upgraded_path(r.id)),
        "last_write_at": (last_write > 0).then(|| OffsetDateTime::from_unix_timestamp(last_write).ok().map(rfc3339)),
        "writing": activity.writers.load(Ordering::Relaxed) > 0,
        "sessions": sessions,
        "peers": peers,
        "nodes": nodes,
        "created_at": rfc3339(r.created_at),
        "updated_at": rfc3339(r.updated_at),
    })
}

/// The live sessions of request `id` on every node: their number, their client addresses
/// (at most [`MAX_PEERS_LISTED`]) and both per node that has some (`[{node, sessions,
/// peers}]`, this node first). Other nodes' sessions are as they last published them, a
/// few seconds ago at most (a shared store only).
fn live_sessions(state: &AdminState, id: u64) -> (usize, Vec<String>, Vec<Value>) {
    let g = &state.gateway;
    let here: Vec<String> = g.peers_of(id).iter().map(|p| p.to_string()).collect();
    let mut per_node = Vec::new();
    if !here.is_empty() {
        let count = here.len();
        let peers: Vec<String> = here.into_iter().take(MAX_PEERS_LISTED).collect();
        per_node.push((state.node.clone(), count, peers));
    }
    for (node, r) in g.sessions_elsewhere(id) {
        per_node.push((node, r.sessions, r.peers));
    }
    let sessions = per_node.iter().map(|(_, n, _)| n).sum();
    let peers = per_node
        .iter()
        .flat_map(|(_, _, p)| p.iter().cloned())
        .take(MAX_PEERS_LISTED)
        .collect();
    let nodes = per_node
        .into_iter()
        .map(|(node, sessions, peers)| json!({"node": node, "sessions": sessions, "peers": peers}))
        .collect();
    (sessions, peers, nodes)
}

fn ok_one(state: &AdminState, r: &Record) -> Json<Value> {
    Json(json!({"failures": [], "request": view(state, r)}))
}

/// One page of records in id order (see list_query.rs); `next` is the `after` of the next
/// page, `null` on the last one.
pub async fn list(
    State(state): State<Arc<AdminState>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let query = parse_list_query(raw.as_deref()).map_err(|failures| ApiError {
        status: StatusCode::BAD_REQUEST,
        failures,
    })?;
    let (records, next) = state
        .gateway
        .page(&query)
        .await
        .map_err(ApiError::storage)?;
    let page: Vec<Value> = records.iter().map(|r| view(&state, r)).collect();
    Ok(Json(
        json!({"failures": [], "requests": page, "next": next}),
    ))
}

/// The record of request `id`, or the 404 every route gives for an unknown request.
pub(crate) async fn existing(state: &AdminState, id: u64) -> ApiResult<Record> {
    state
        .gateway
        .record(id)
        .await
        .map_err(ApiError::storage)?
        .ok_or_else(|| ApiError::not_found(id))
}

pub async fn show(
    State(state): State<Arc<AdminState>>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    let r = existing(&state, id).await?;
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

/// Runs `decide` as a change of record `id`: a refusal it returns is the answer, a record
/// it puts is audited and returned.
async fn change(
    g: &Gateway,
    id: u64,
    decide: impl FnOnce(Option<&Record>) -> ApiResult<Record> + Send,
) -> ApiResult<Record> {
    let (updated, outcome) = g
        .change(id, |existing| match decide(existing) {
            Ok(record) => (Decision::Put(record), Ok(())),
            Err(refusal) => (Decision::Keep, Err(refusal)),
        })
        .await
        .map_err(ApiError::storage)?;
    outcome?;
    let Updated { before, after, .. } = updated;
    let record = after.ok_or_else(|| ApiError::storage("a put left no record"))?;
    audit_change(&record, before.as_ref());
    Ok(record)
}

fn check_transition(upgraded: &FsPath, to: ReqState) -> Result<(), Failure> {
    if to == ReqState::Done && !upgraded.is_file() {
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
    let mut body: PutBody = parse_json(body)?;
    // Parsed before the change: it does not depend on the record, and the change holds
    // up the record's other writers while it runs.
    let ssh_keys = body.ssh_keys.take().map(|text| {
        parse_authorized_keys(&text)
            .map(|_| text)
            .map_err(keys_failures)
    });
    let upgraded = state.gateway.upgraded_path(id);
    let now = OffsetDateTime::now_utc();
    let record = change(&state.gateway, id, |existing| {
        merge(id, body, ssh_keys, existing, &upgraded, now).map_err(|failures| ApiError {
            status: StatusCode::BAD_REQUEST,
            failures,
        })
    })
    .await?;
    Ok(ok_one(&state, &record))
}

/// The record a PUT makes of `existing` (or creates), or every failure found in its body
/// in the order the fields come. `ssh_keys` is the body's keys text, taken out of it and
/// parsed.
fn merge(
    id: u64,
    body: PutBody,
    ssh_keys: Option<Result<String, Vec<Failure>>>,
    existing: Option<&Record>,
    upgraded: &FsPath,
    now: OffsetDateTime,
) -> Result<Record, Vec<Failure>> {
    let mut failures = Vec::new();

    let filename = body
        .filename
        .or_else(|| existing.map(|r| r.filename.clone()));
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
    let key_sha256 = match (body.key.as_deref(), existing) {
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
        None => existing.map_or(ReqState::Draft, |r| r.state),
        Some(s) => ReqState::parse(s).unwrap_or_else(|| {
            failures.push(state_failure(s));
            ReqState::Draft
        }),
    };
    let ssh_keys = match ssh_keys {
        Some(Ok(text)) => text,
        Some(Err(e)) => {
            failures.extend(e);
            String::new()
        }
        None => existing.map(|r| r.ssh_keys.clone()).unwrap_or_default(),
    };
    // An expiry the operator sets is also the ceiling for the customer's own calls; one the
    // operator leaves alone keeps both as they were (a customer's expiry included).
    let (expires_at, operator_expires_at) = match body.expires_at {
        None => existing.map_or((None, None), |r| (r.expires_at, r.operator_expires_at)),
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
    if failures.is_empty() && existing.is_none_or(|r| r.state != new_state) {
        if let Err(f) = check_transition(upgraded, new_state) {
            failures.push(f);
        }
    }
    if !failures.is_empty() {
        return Err(failures);
    }
    Ok(Record {
        id,
        filename: filename.unwrap_or_default(),
        state: new_state,
        key_sha256: key_sha256.unwrap_or_default(),
        ssh_keys,
        expires_at,
        operator_expires_at,
        created_at: existing.map_or(now, |r| r.created_at),
        updated_at: now,
    })
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
    let to = ReqState::parse(&body.state);
    let upgraded = state.gateway.upgraded_path(id);
    let record = change(&state.gateway, id, |existing| {
        // Refusals in the order they always came: unknown request, unknown state, then a
        // transition the files do not allow.
        let existing = existing.ok_or_else(|| ApiError::not_found(id))?;
        let to =
            to.ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, state_failure(&body.state)))?;
        check_transition(&upgraded, to).map_err(|f| ApiError::new(StatusCode::CONFLICT, f))?;
        let mut record = existing.clone();
        record.state = to;
        record.updated_at = OffsetDateTime::now_utc();
        Ok(record)
    })
    .await?;
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
    // (the answer's `request` is then null). The view is of the record being deleted.
    let (updated, view) = state
        .gateway
        .change(id, |record| match record {
            None if !q.purge => (Decision::Keep, None),
            record => (
                Decision::Delete { purge: q.purge },
                record.map(|r| view(&state, r)),
            ),
        })
        .await
        .map_err(ApiError::storage)?;
    if !updated.deleted() {
        return Err(ApiError::not_found(id));
    }
    tracing::info!(target: "audit", event = "request-deleted", request = id, purge = q.purge, "deleted");
    Ok(Json(json!({"failures": [], "request": view})))
}
