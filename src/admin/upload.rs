//! `POST /database/v1/upload?key=...&request=...`: the reference's other way in, the dump
//! as the raw body (any content type). It serves the same request and the same file as
//! an upload session: the key is checked like `request_sftp_access` checks it (same
//! throttle, same reasons), only a `draft` request takes an upload, the size limit is
//! `--max-upload-size`, and the end of an upload is the same audit line and upload-closed
//! event as an SFTP write handle's close.
//!
//! The plain call replaces the file. `?offset=N` or `Content-Range: bytes N-*/*` (or
//! `bytes N-M/T`) appends, and is accepted only when N is the file's size now, so that a
//! client cut off can go on from what the gateway has: every byte received is kept (and
//! fsynced) whatever ends the body, and the answer names the size.
//!
//! One writer at a time: the upload holds the request's upload lease exclusively (see
//! [`crate::leases`]), so no SFTP write handle of the request is open, here or on another
//! node, while it writes; it waits `--lease-wait` for one to close, then is refused
//! `UPLOAD:BUSY`. The body is written by a task of its own, so that a client that goes
//! away mid-body still leaves its bytes synced, its event sent and the lease released.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use time::OffsetDateTime;
use tokio::io::AsyncSeekExt;

use super::access::{client_addr, missing, request_id};
use super::body::{drain, write_body, Admit, ObjectSink, Sink, Stop};
use super::form::parse_access_form;
use super::merge::{closed_by_operator, key_matches};
use super::{AdminState, ApiError};
use crate::api::{Dump, Failure, Reason, UploadAnswer, UploadQuery, UploadState};
use crate::gateway::Via;
use crate::leases::{Hold, UNAVAILABLE};
use crate::sftp::{LeaseHold, WriteSummary};
use crate::storage::Dumps;
use crate::store::multipart::Object;
use crate::store::{private, Record, State as ReqState};

/// How often the record is read again while a body arrives: a cancel, a state change or
/// the operator's expiry stops the upload about this fast, as it ends an SFTP session.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// What of a refused call's body is read before answering (see [`drain`]); a client
/// that sends more is cut off.
const DRAIN_MAX: usize = 1024 * 1024;
const DRAIN_FOR: Duration = Duration::from_secs(2);

/// Where the body goes in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// The plain call: the file is replaced.
    Replace,
    /// Appended at this offset, which must be the file's size.
    Append(u64),
}

/// An append's range as the client stated it: `?offset=`, `Content-Range`, or both.
#[derive(Debug, Default, PartialEq, Eq)]
struct Range {
    start: Option<u64>,
    /// The last byte, for `bytes N-M/T`: the body is then exactly `M - N + 1` bytes.
    last: Option<u64>,
    /// The whole file's size, if the client said it.
    total: Option<u64>,
}

/// `bytes N-*/*`, `bytes N-M/*`, `bytes N-*/T` or `bytes N-M/T`.
fn parse_content_range(h: &str) -> Option<Range> {
    let h = h.trim();
    let spec = h.get(..6).filter(|u| u.eq_ignore_ascii_case("bytes "))?;
    let (range, total) = h[spec.len()..].trim().split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let number = |s: &str| -> Option<Option<u64>> {
        match s.trim() {
            "*" => Some(None),
            n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.parse().ok().map(Some),
            _ => None,
        }
    };
    let (start, last, total) = (number(first)??, number(last)?, number(total)?);
    if last.is_some_and(|l| l < start) || total.is_some_and(|t| t < last.map_or(start, |l| l + 1)) {
        return None;
    }
    Some(Range {
        start: Some(start),
        last,
        total,
    })
}

fn invalid_range(message: impl Into<String>) -> ApiError {
    ApiError::bad(Reason::RangeInvalid, message)
}

/// The append range of a call, from `offset` and the `Content-Range` header, checked
/// against each other and the body's `Content-Length`.
fn range_of(
    offset: Option<&str>,
    headers: &HeaderMap,
    length: Option<u64>,
) -> Result<Range, ApiError> {
    let mut range = match headers.get(header::CONTENT_RANGE) {
        None => Range::default(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(parse_content_range)
            .ok_or_else(|| {
                invalid_range(
                    "Content-Range must be bytes N-*/*, or bytes N-M/T with M and T consistent",
                )
            })?,
    };
    if let Some(raw) = offset {
        let n = raw
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|_| !raw.trim().starts_with('+'))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    Failure::new(Reason::OffsetInvalid, "offset must be a byte count")
                        .value(raw.chars().take(40).collect::<String>()),
                )
            })?;
        if range.start.is_some_and(|s| s != n) {
            return Err(invalid_range(
                "offset and Content-Range name different offsets",
            ));
        }
        range.start = Some(n);
    }
    if let (Some(start), Some(last)) = (range.start, range.last) {
        if length != Some(last - start + 1) {
            return Err(invalid_range(format!(
                "Content-Range bytes {start}-{last} needs a Content-Length of {}",
                last - start + 1
            )));
        }
    }
    Ok(range)
}

/// Whether `record` still takes an upload at `now`: it exists, is in `draft`, and the
/// operator's expiry has not passed. The customer's own SFTP access window
/// (`request_sftp_access`'s `--access-ttl`) is not looked at: it is about SFTP logins.
fn takes_upload(record: Option<&Record>, now: OffsetDateTime) -> Result<&Record, ApiError> {
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

fn too_large(max: u64) -> ApiError {
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
struct Plan {
    id: u64,
    filename: String,
    start: Start,
    /// The body's length, if the client said it.
    length: Option<u64>,
    path: PathBuf,
    hold: Arc<Hold>,
    peer: SocketAddr,
}

/// Everything that can refuse the call before its body is read; on success the caller
/// holds the upload's lease and the file is as it was.
async fn admit(state: &AdminState, parts: &Parts, peer: SocketAddr) -> Result<Plan, Response> {
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

/// The answer to a call that got as far as the file: `failures` (none on success) and
/// what the file is now.
fn answer(e: ApiError, plan: Option<&Plan>, size: u64, written: u64) -> Response {
    let upload = match plan {
        Some(p) => UploadState {
            request_id: Some(p.id),
            filename: Some(p.filename.clone()),
            offset: Some(match p.start {
                Start::Replace => 0,
                Start::Append(n) => n,
            }),
            bytes_written: Some(written),
            size,
        },
        None => UploadState {
            size,
            ..UploadState::default()
        },
    };
    let body = UploadAnswer {
        failures: e.failures,
        upload: Some(upload),
    };
    (e.status, Json(body)).into_response()
}

#[utoipa::path(
    post,
    path = "/database/v1/upload",
    tag = "customer",
    summary = "Upload the dump over HTTP (the customer's call)",
    operation_id = "upload",
    description = "The reference API's `upload`: the dump is the raw body, streamed to the request's one file (the same file as SFTP's), synced before the answer. Authenticated by the request's own key, draft only. Without `offset` (or `Content-Range`) it replaces the file; with `offset=N` or `Content-Range: bytes N-*/*` it appends, only when N is the current size. One writer at a time beside SFTP sessions: a busy upload waits `--lease-wait`, then 409 `UPLOAD:BUSY`.",
    params(UploadQuery),
    request_body(content = inline(Dump), content_type = "application/octet-stream", description = "The dump, or the rest of it from `offset`"),
    responses(
        (status = 200, description = "Stored (`failures` empty)", body = UploadAnswer),
        (status = 400, description = "`REQUEST:MISSING`, `KEY:MISSING`, `REQUEST:INVALID`, `REQUEST:MALFORMED`, `OFFSET:INVALID`, `RANGE:INVALID`, `BODY:INTERRUPTED`", body = UploadAnswer),
        (status = 403, description = "`KEY:INVALID`, `ACCESS:EXPIRED`", body = UploadAnswer),
        (status = 409, description = "`STATE:INVALID`, `OFFSET:MISMATCH` (with the current size), `UPLOAD:BUSY`", body = UploadAnswer),
        (status = 413, description = "`UPLOAD:TOO_LARGE`", body = UploadAnswer),
        (status = 429, description = "`KEY:THROTTLED`", body = UploadAnswer),
        (status = 503, description = "`STORAGE:UNAVAILABLE`, `UPLOAD:LEASE_LOST`, `GATEWAY:STOPPING`", body = UploadAnswer),
    ),
    security(()),
)]
pub async fn upload(State(state): State<Arc<AdminState>>, req: Request) -> Response {
    let peer = client_addr(&req);
    let (parts, body) = req.into_parts();
    let plan = match admit(&state, &parts, peer).await {
        Ok(plan) => plan,
        Err(refusal) => {
            // A client that asked for `100 Continue` sends nothing unless asked.
            if !parts.headers.contains_key(header::EXPECT) {
                drain(&mut body.into_data_stream(), DRAIN_MAX, DRAIN_FOR).await;
            }
            return refusal;
        }
    };
    // Its own task: it finishes (sync, event, lease) even if the connection is dropped.
    let task = tokio::spawn(receive(state, plan, body));
    match task.await {
        Ok(r) => r,
        Err(e) => ApiError::storage(e).into_response(),
    }
}

/// Writes the body of an admitted call, then syncs the file and reports the upload,
/// whatever ended the body.
async fn receive(state: Arc<AdminState>, plan: Plan, body: Body) -> Response {
    let opened = Instant::now();
    let (mut file, at) = match open(&state, &plan).await {
        Ok(f) => f,
        Err(e) => return ApiError::storage(e).into_response(),
    };
    tracing::info!(target: "audit", event = "file-opened", request = plan.id, via = "http",
        peer = %plan.peer, offset = at, truncate = plan.start == Start::Replace, "upload started");
    let activity = state.gateway.activity(plan.id);
    activity
        .writers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let budget = state
        .gateway
        .max_upload_size()
        .map(|m| m.saturating_sub(at));
    let hold = plan.hold.clone();
    let admit = |written: u64, len: usize| -> Admit {
        if !hold.valid() {
            return Admit::Nothing(Stop::Refused(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Failure::new(
                    Reason::UploadLeaseLost,
                    "this node lost the upload's lease; resume with ?offset= at the size given",
                ),
            )));
        }
        match budget {
            Some(b) if written.saturating_add(len as u64) > b => {
                let fits = usize::try_from(b.saturating_sub(written)).unwrap_or(usize::MAX);
                let max = state.gateway.max_upload_size().unwrap_or(b);
                Admit::Part(fits, Stop::Refused(too_large(max)))
            }
            _ => Admit::All,
        }
    };
    let mut stream = body.into_data_stream();
    let revoked = async {
        tokio::select! {
            e = revoked(&state, plan.id) => Stop::Refused(e),
            _ = state.shutdown.cancelled() => Stop::Refused(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Failure::new(
                    Reason::GatewayStopping,
                    "the gateway is stopping; resume with ?offset= at the size given",
                ),
            )),
        }
    };
    let (written, mut end) = write_body(
        &mut stream,
        &mut file,
        admit,
        |n| activity.wrote(n),
        revoked,
    )
    .await;
    if end.is_ok() && plan.length.is_some_and(|l| l != written) {
        end = Err(Stop::Interrupted(format!(
            "{written} of the {} bytes announced arrived",
            plan.length.unwrap_or_default()
        )));
    }
    // Every byte written is kept, and durable before anyone hears of it.
    let finished = file.finish().await;
    activity
        .writers
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let size = match finished {
        Ok(size) => size,
        Err(e) => return ApiError::storage(e).into_response(),
    };
    let recorded = state
        .gateway
        .upload_closed(
            plan.id,
            None,
            plan.peer,
            Via::Http,
            &WriteSummary {
                bytes: written,
                size,
                duration: opened.elapsed(),
            },
        )
        .await;
    // The event is what starts the upgrade: an upload whose event could not be stored is
    // not acknowledged (its bytes are kept; the same call again, or `?offset=` with no
    // body, closes it again).
    if let Err(why) = recorded {
        if end.is_ok() {
            end = Err(Stop::Refused(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Failure::new(Reason::StorageUnavailable, why),
            )));
        }
    }
    if end.is_ok() && !plan.hold.valid() {
        end = Err(Stop::Refused(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Failure::new(
                Reason::UploadLeaseLost,
                "this node lost the upload's lease before the upload was synced; resume with ?offset=",
            ),
        )));
    }
    let e = match end {
        Ok(()) => ApiError {
            status: StatusCode::OK,
            failures: Vec::new(),
        },
        Err(Stop::Interrupted(e)) => Stop::Interrupted(e).into_api(),
        Err(Stop::Io(e)) => {
            activity
                .write_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Stop::Io(e).into_api()
        }
        Err(stop) if state.shutdown.is_cancelled() => stop.into_api(),
        Err(stop) => {
            // Refused mid-body: the rest is not wanted, but a client still sending it
            // should read why.
            drain(&mut stream, DRAIN_MAX, DRAIN_FOR).await;
            stop.into_api()
        }
    };
    answer(e, Some(&plan), size, written)
}

/// The upload being written: a file, or an object whose tail is spooled.
enum Target {
    File(tokio::fs::File),
    Object(ObjectSink),
}

impl Sink for Target {
    async fn put(&mut self, chunk: Bytes) -> std::io::Result<()> {
        match self {
            Target::File(f) => f.put(chunk).await,
            Target::Object(o) => o.put(chunk).await,
        }
    }
}

impl Target {
    /// Makes what was written durable (an object: completed) and returns the size.
    async fn finish(self) -> std::io::Result<u64> {
        match self {
            Target::File(f) => {
                f.sync_all().await?;
                Ok(f.metadata().await?.len())
            }
            Target::Object(ObjectSink(writer)) => {
                let writer =
                    writer.ok_or_else(|| std::io::Error::other("the object's writer failed"))?;
                tokio::task::spawn_blocking(move || writer.finish())
                    .await
                    .map_err(std::io::Error::other)?
            }
        }
    }
}

/// Opens the upload for the plan: emptied for a replace, at its end for an append (which
/// [`admit`] checked is the offset asked for). The offset it writes at.
async fn open(state: &AdminState, plan: &Plan) -> std::io::Result<(Target, u64)> {
    let at = match plan.start {
        Start::Replace => 0,
        Start::Append(n) => n,
    };
    if let Dumps::S3(s3) = state.gateway.dumps() {
        let (s3, id, replace) = (s3.clone(), plan.id, plan.start == Start::Replace);
        let writer = tokio::task::spawn_blocking(move || s3.writer(id, Object::Upload, replace))
            .await
            .map_err(std::io::Error::other)??;
        return Ok((Target::Object(ObjectSink(Some(writer))), at));
    }
    if let Some(dir) = plan.path.parent() {
        private::create_dir(dir)?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(plan.start == Start::Replace)
        .mode(private::FILE_MODE)
        .open(&plan.path)
        .await?;
    file.seek(std::io::SeekFrom::Start(at)).await?;
    Ok((Target::File(file), at))
}

/// Reads the record every [`RECHECK_EVERY`] while the body arrives; ready, with why,
/// once it no longer takes an upload.
async fn revoked(state: &AdminState, id: u64) -> ApiError {
    loop {
        tokio::time::sleep(RECHECK_EVERY).await;
        let Ok(record) = state.gateway.record(id).await else {
            // A store that does not answer ends nothing, as for SFTP sessions.
            continue;
        };
        if let Err(e) = takes_upload(record.as_ref(), OffsetDateTime::now_utc()) {
            tracing::info!(target: "audit", event = "revoked", request = id, via = "http", "access ended; stopping the upload");
            return e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, last: Option<u64>, total: Option<u64>) -> Option<Range> {
        Some(Range {
            start: Some(start),
            last,
            total,
        })
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 10-*/*"), range(10, None, None));
        assert_eq!(parse_content_range("Bytes 0-*/*"), range(0, None, None));
        assert_eq!(
            parse_content_range("bytes 10-19/20"),
            range(10, Some(19), Some(20))
        );
        assert_eq!(
            parse_content_range("bytes 10-19/*"),
            range(10, Some(19), None)
        );
        assert_eq!(
            parse_content_range("bytes 10-*/100"),
            range(10, None, Some(100))
        );
        for bad in [
            "bytes */*",
            "bytes */100",
            "bytes 10-9/*",
            "bytes 10-19/19",
            "bytes 10-*/9",
            "bytes +1-*/*",
            "bytes -1-*/*",
            "bytes 1-2",
            "items 1-*/*",
            "bytes",
            "bytes 99999999999999999999-*/*",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn offsets_and_ranges_agree_with_each_other_and_the_length() {
        let mut h = HeaderMap::new();
        assert_eq!(range_of(None, &h, None).unwrap(), Range::default());
        assert_eq!(range_of(Some("7"), &h, None).unwrap().start, Some(7));
        for bad in ["", "x", "-1", "+7", "1e3"] {
            let e = range_of(Some(bad), &h, None).unwrap_err();
            assert_eq!(e.failures[0].reason, Reason::OffsetInvalid, "{bad}");
        }
        h.insert(header::CONTENT_RANGE, "bytes 7-*/*".parse().unwrap());
        assert_eq!(range_of(Some("7"), &h, None).unwrap().start, Some(7));
        assert_eq!(
            range_of(Some("8"), &h, None).unwrap_err().failures[0].reason,
            Reason::RangeInvalid
        );
        h.insert(header::CONTENT_RANGE, "bytes 7-9/10".parse().unwrap());
        assert_eq!(range_of(None, &h, Some(3)).unwrap().last, Some(9));
        for length in [None, Some(2), Some(4)] {
            let e = range_of(None, &h, length).unwrap_err();
            assert_eq!(e.failures[0].reason, Reason::RangeInvalid);
        }
    }
}
