//! Request records: create/update, show, list, state changes, delete. Each change is one
//! `Gateway::change`, whose decision (see merge.rs) is taken from the record as it is at
//! that moment, so that a customer's `request_sftp_access` racing it cannot undo it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use futures::StreamExt;
use time::OffsetDateTime;

use super::list_query::parse_list_query;
use super::merge::{check_transition, state_failure, OperatorPut};
use super::view::view;
use super::{parse_id, AdminState, ApiError, ApiResult};
use crate::api::{
    DeleteQuery, Deleted, Failure, ListQuery, OneRequest, PutRequest, Reason, Refusal,
    RequestIdPath, RequestList, StateChange,
};
use crate::gateway::Gateway;
use crate::store::multipart::Object;
use crate::store::{Decision, Record, State as ReqState, Updated};

/// Views of a page built at once: on object storage each costs two HEADs.
pub(crate) const VIEWS_AT_ONCE: usize = 32;

/// Whether request `id`'s upgraded dump is there (what `done` needs).
async fn has_upgraded(state: &AdminState, id: u64) -> ApiResult<bool> {
    let size = state.gateway.dump_size(id, Object::Upgraded).await;
    Ok(size.map_err(ApiError::storage)?.is_some())
}

async fn ok_one(state: &AdminState, r: &Record) -> Json<OneRequest> {
    Json(OneRequest {
        failures: Vec::new(),
        request: view(state, r).await,
    })
}

#[utoipa::path(
    get,
    path = "/v1/requests",
    operation_id = "listRequests",
    tag = "requests",
    summary = "List requests",
    description = "Requests ordered by id, a page at a time: pass `next` as `after` for the next page.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of requests", body = RequestList),
        (status = 400, description = "`QUERY:INVALID`", body = Refusal),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<Arc<AdminState>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<RequestList>> {
    let query = parse_list_query(raw.as_deref()).map_err(ApiError::bad_all)?;
    let (records, next) = state
        .gateway
        .page(&query)
        .await
        .map_err(ApiError::storage)?;
    Ok(Json(RequestList {
        failures: Vec::new(),
        // Concurrently, boundedly: on object storage each size is a HEAD.
        requests: {
            let views: Vec<_> = records.iter().map(|r| view(&state, r)).collect();
            futures::stream::iter(views)
                .buffered(VIEWS_AT_ONCE)
                .collect()
                .await
        },
        next,
    }))
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

#[utoipa::path(
    get,
    path = "/v1/requests/{id}",
    tag = "requests",
    summary = "Show a request",
    operation_id = "showRequest",
    params(RequestIdPath),
    responses(
        (status = 200, description = "The request", body = OneRequest),
    ),
    security(("bearer" = [])),
)]
pub async fn show(
    State(state): State<Arc<AdminState>>,
    Path(raw): Path<String>,
) -> ApiResult<Json<OneRequest>> {
    let id = parse_id(&raw)?;
    let r = existing(&state, id).await?;
    Ok(ok_one(&state, &r).await)
}

/// The body of a JSON route: a size or transport problem is a failure like any other.
pub(crate) type JsonBody = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn parse_json<T: serde::de::DeserializeOwned>(body: JsonBody) -> ApiResult<T> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Failure::new(Reason::BodyTooLarge, "the body is larger than 1 MiB"),
            )
        } else {
            ApiError::bad(Reason::BodyInvalid, e.body_text())
        }
    })?;
    let invalid = |e: &dyn std::fmt::Display| {
        ApiError::bad(
            Reason::BodyInvalidJson,
            format!("the body is not valid JSON for this route: {e}"),
        )
    };
    // An object, and nothing else: serde would also read a struct from an array of its
    // fields' values (`[null, null]`), which no client means.
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| invalid(&e))?;
    if !value.is_object() {
        return Err(invalid(&"the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| invalid(&e))
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

#[utoipa::path(
    put,
    path = "/v1/requests/{id}",
    tag = "requests",
    summary = "Create or update a request",
    operation_id = "putRequest",
    description = "`filename` and `key` are required to create a request; an update changes only the fields given. A request created under an id used before starts with no upload and no upgraded file.",
    params(RequestIdPath),
    request_body = PutRequest,
    responses(
        (status = 200, description = "The request as stored", body = OneRequest),
        (status = 400, description = "`BODY:INVALID`, `BODY:INVALID_JSON`, or every failure of the body: `FILENAME:REQUIRED`, `FILENAME:INVALID`, `KEY:REQUIRED`, `KEY:INVALID`, `STATE:INVALID`, `SSH_KEYS:*`, `EXPIRES_AT:INVALID`, `UPGRADED:MISSING`", body = Refusal),
        (status = 413, description = "`BODY:TOO_LARGE`", body = Refusal),
    ),
    security(("bearer" = [])),
)]
pub async fn put(
    State(state): State<Arc<AdminState>>,
    Path(raw): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<OneRequest>> {
    let id = parse_id(&raw)?;
    let put = OperatorPut::parse(parse_json(body)?);
    let upgraded = has_upgraded(&state, id).await?;
    let now = OffsetDateTime::now_utc();
    let record = change(&state.gateway, id, |existing| {
        put.merge(id, existing, upgraded, now)
            .map_err(ApiError::bad_all)
    })
    .await?;
    Ok(ok_one(&state, &record).await)
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

#[utoipa::path(
    post,
    path = "/v1/requests/{id}/state",
    tag = "requests",
    summary = "Change a request's state",
    operation_id = "setRequestState",
    description = "Leaving `draft`/`done` closes the request's live sessions; `done` needs the upgraded file.",
    params(RequestIdPath),
    request_body = StateChange,
    responses(
        (status = 200, description = "The request in its new state", body = OneRequest),
        (status = 400, description = "`BODY:INVALID`, `BODY:INVALID_JSON`, `STATE:INVALID`", body = Refusal),
        (status = 409, description = "`UPGRADED:MISSING`", body = Refusal),
        (status = 413, description = "`BODY:TOO_LARGE`", body = Refusal),
    ),
    security(("bearer" = [])),
)]
pub async fn set_state(
    State(state): State<Arc<AdminState>>,
    Path(raw): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<OneRequest>> {
    let id = parse_id(&raw)?;
    let body: StateChange = parse_json(body)?;
    let to = ReqState::parse(&body.state);
    let upgraded = has_upgraded(&state, id).await?;
    let record = change(&state.gateway, id, |existing| {
        // Refusals in the order they always came: unknown request, unknown state, then a
        // transition the files do not allow.
        let existing = existing.ok_or_else(|| ApiError::not_found(id))?;
        let to =
            to.ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, state_failure(&body.state)))?;
        check_transition(upgraded, to).map_err(|f| ApiError::new(StatusCode::CONFLICT, f))?;
        let mut record = existing.clone();
        record.state = to;
        record.updated_at = OffsetDateTime::now_utc();
        Ok(record)
    })
    .await?;
    Ok(ok_one(&state, &record).await)
}

#[utoipa::path(
    delete,
    path = "/v1/requests/{id}",
    tag = "requests",
    summary = "Revoke a request",
    operation_id = "deleteRequest",
    description = "Its live sessions are closed. With `purge=true` its files are deleted too, also those a delete without purge kept (then `request` is `null` if there was no record).",
    params(RequestIdPath, DeleteQuery),
    responses(
        (status = 200, description = "The request as it was", body = Deleted),
        (status = 400, description = "`QUERY:INVALID`", body = Refusal),
    ),
    security(("bearer" = [])),
)]
pub async fn delete(
    State(state): State<Arc<AdminState>>,
    Path(raw): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Deleted>> {
    let id = parse_id(&raw)?;
    let Query(q) =
        query.map_err(|_| ApiError::bad(Reason::QueryInvalid, "purge must be true or false"))?;
    // Without a record, a purge still removes what a delete without purge left behind
    // (the answer's `request` is then null). The view is of the record being deleted.
    let (updated, deleted) = state
        .gateway
        .change(id, |record| match record {
            None if !q.purge => (Decision::Keep, None),
            record => (Decision::Delete { purge: q.purge }, record.cloned()),
        })
        .await
        .map_err(ApiError::storage)?;
    if !updated.deleted() {
        return Err(ApiError::not_found(id));
    }
    tracing::info!(target: "audit", event = "request-deleted", request = id, purge = q.purge, "deleted");
    // Its files as they are now: gone after a purge.
    let request = match deleted {
        Some(r) => Some(view(&state, &r).await),
        None => None,
    };
    Ok(Json(Deleted {
        failures: Vec::new(),
        request,
    }))
}
