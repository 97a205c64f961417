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
//!
//! Beside this file in `upload/`: `admit.rs`, the checks before the body is read;
//! `range.rs`, where the body goes in the file.

mod admit;
mod range;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use time::OffsetDateTime;
use tokio::io::AsyncSeekExt;

use super::access::client_addr;
use super::body::{drain, write_body, Admit, ObjectSink, Sink, Stop};
use super::{AdminState, ApiError};
use crate::api::{Dump, Failure, Reason, UploadAnswer, UploadQuery, UploadState};
use crate::gateway::Via;
use crate::sftp::{LeaseHold, WriteSummary};
use crate::storage::Dumps;
use crate::store::multipart::Object;
use crate::store::private;
use admit::{admit, takes_upload, too_large, Plan};
use range::Start;

/// How often the record is read again while a body arrives: a cancel, a state change or
/// the operator's expiry stops the upload about this fast, as it ends an SFTP session.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// What of a refused call's body is read before answering (see [`drain`]); a client
/// that sends more is cut off.
const DRAIN_MAX: usize = 1024 * 1024;
const DRAIN_FOR: Duration = Duration::from_secs(2);

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
