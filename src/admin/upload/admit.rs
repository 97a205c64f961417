//! Everything that can refuse an HTTP upload before its body is read: the form, the key
//! (throttled as `request_sftp_access` throttles it), the record's state and expiry, the
//! size limit, the upload's lease and the append offset. What it accepts is a [`Plan`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use super::answer;
use super::range::{range_of, Start};
use crate::admin::access::{missing, request_id};
use crate::admin::form::parse_access_form;
use crate::admin::merge::{closed_by_operator, key_matches};
use crate::admin::{AdminState, ApiError};
use crate::api::{Failure, Reason};
use crate::leases::{Hold, UNAVAILABLE};
use crate::storage::Dumps;
use crate::store::{Record, State as ReqState};

/// Whether `record` still takes an upload at `now`: it exists, is in `draft`, and the
/// operator's expiry has not passed. The customer's own SFTP access window
/// (`request_sftp_access`'s `--access-ttl`) is not looked at: it is about SFTP logins.
pub(super) fn takes_upload(
    record: Option<&Record>,
    now: OffsetDateTime,
) -> Result<&Record, ApiError> {
    let Some(r) = record else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            Failure::new(Reason::KeyInvalid, "unknown request or wrong key"),
        ));
    };
    if r.state != ReqState::Draft {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            Failure::new(
                Reason::StateInvalid,
                format!(
                    "an upload needs the request in draft, it is {}",
                    r.state.as_str()
                ),
            )
            .value(r.state.as_str())
            .expected(vec!["draft".into()]),
        ));
    }
    if r.operator_expires_at.is_some_and(|t| now >= t) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, closed_by_operator(r)));
    }
    Ok(r)
}

fn file_size(path: &std::path::Path) -> std::io::Result<u64> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

pub(super) fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        Failure::new(
            Reason::UploadTooLarge,
            format!("upload size limit of {max} bytes exceeded"),
        )
        .value(max),
    )
}

/// An accepted call, holding the upload's lease.
pub(super) struct Plan {
    pub(super) id: u64,
    pub(super) filename: String,
    pub(super) start: Start,
    /// The body's length, if the client said it.
    pub(super) length: Option<u64>,
    pub(super) path: PathBuf,
    pub(super) hold: Arc<Hold>,
    pub(super) peer: SocketAddr,
}

/// Everything that can refuse the call before its body is read; on success the caller
/// holds the upload's lease and the file is as it was.
pub(super) async fn admit(
    state: &AdminState,
    parts: &Parts,
    peer: SocketAddr,
) -> Result<Plan, Response> {
    let query = parts.uri.query();
    let p = parse_access_form(query, "", Bytes::new())
        .await
        .map_err(|e| ApiError::bad(Reason::RequestMalformed, e).into_response())?;
    let offset: Option<String> = query
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .and_then(|pairs| {
            pairs
                .into_iter()
                .find(|(k, _)| k == "offset")
                .map(|(_, v)| v)
        });
    let failures = missing(&[
        (Reason::RequestMissing, "request", p.request.is_some()),
        (Reason::KeyMissing, "key", p.key.is_some()),
    ]);
    if !failures.is_empty() {
        return Err(ApiError::bad_all(failures).into_response());
    }
    let (raw_id, key) = (p.request.unwrap_or_default(), p.key.unwrap_or_default());
    let id = request_id(&raw_id)
        .map_err(|f| ApiError::new(StatusCode::BAD_REQUEST, f).into_response())?;
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let range =
        range_of(offset.as_deref(), &parts.headers, length).map_err(|e| e.into_response())?;
    let ip = peer.ip();
    state
        .throttle
        .check(id, ip)
        .map_err(|f| ApiError::new(StatusCode::TOO_MANY_REQUESTS, f).into_response())?;
    let record = state
        .gateway
        .record(id)
        .await
        .map_err(|e| ApiError::storage(e).into_response())?;
    if !key_matches(record.as_ref(), &key) {
        let f = state.throttle.wrong_key(id, ip);
        return Err(ApiError::new(StatusCode::FORBIDDEN, f).into_response());
    }
    state.throttle.succeeded(id, ip);
    takes_upload(record.as_ref(), OffsetDateTime::now_utc()).map_err(|e| e.into_response())?;
    let start = range.start.map_or(Start::Replace, Start::Append);
    if let Some(max) = state.gateway.max_upload_size() {
        let from = range.start.unwrap_or(0);
        let known = [length.map(|l| from.saturating_add(l)), range.total];
        if known.into_iter().flatten().any(|size| size > max) {
            return Err(too_large(max).into_response());
        }
    }
    let hold = state.gateway.lease_upload_alone(id).await.map_err(|why| {
        let (status, reason) = if why == UNAVAILABLE {
            (StatusCode::SERVICE_UNAVAILABLE, Reason::StorageUnavailable)
        } else {
            (StatusCode::CONFLICT, Reason::UploadBusy)
        };
        ApiError::new(status, Failure::new(reason, why)).into_response()
    })?;
    // The wait for the lease may have been long: the record as it is now.
    let record = state
        .gateway
        .record(id)
        .await
        .map_err(|e| ApiError::storage(e).into_response())?;
    let filename = takes_upload(record.as_ref(), OffsetDateTime::now_utc())
        .map_err(|e| e.into_response())?
        .filename
        .clone();
    let path = state.gateway.upload_path(id);
    let size = match state.gateway.dumps() {
        // With the lease held, this node's view of the upload is the current one.
        Dumps::S3(s3) => {
            let s3 = s3.clone();
            tokio::task::spawn_blocking(move || s3.upload_size(id))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
        }
        Dumps::Local => file_size(&path),
    }
    .map_err(|e| ApiError::storage(e).into_response())?;
    if let Start::Append(at) = start {
        if at != size {
            let e = ApiError::new(
                StatusCode::CONFLICT,
                Failure::new(
                    Reason::OffsetMismatch,
                    format!("the upload is {size} bytes: append at offset {size}"),
                )
                .value(at)
                .expected(vec![size.to_string()]),
            );
            return Err(answer(e, None, size, 0));
        }
    }
    Ok(Plan {
        id,
        filename,
        start,
        length,
        path,
        hold,
        peer,
    })
}
