//! The dumps themselves: the operator pushes the upgraded file (streamed to disk, never
//! held in memory) and fetches the customer's upload (with HTTP Range support).

use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::body::{write_body, Admit, ObjectSink, Stop};
use super::requests::existing;
use super::view::view;
use super::{parse_id, AdminState, ApiError, ApiResult};
use crate::api::{Dump, Failure, OneRequest, Reason, Refusal, RequestIdPath};
use crate::storage::object::S3Dumps;
use crate::storage::Dumps;
use crate::store::multipart::Object;
use crate::store::{private, sync_dir_io};

#[utoipa::path(
    put,
    path = "/v1/requests/{id}/upgraded",
    tag = "files",
    summary = "Store the upgraded dump",
    operation_id = "putUpgraded",
    description = "The body is the dump itself, streamed to disk (no size limit but the disk's); it replaces the upgraded file atomically once whole.",
    params(RequestIdPath),
    request_body(content = inline(Dump), content_type = "application/octet-stream", description = "The upgraded dump (an empty body stores an empty file)"),
    responses(
        (status = 200, description = "Stored", body = OneRequest),
        (status = 400, description = "`BODY:INTERRUPTED`", body = Refusal),
    ),
    security(("bearer" = [])),
)]
pub async fn put_upgraded(
    State(state): State<Arc<AdminState>>,
    Path(raw): Path<String>,
    body: Body,
) -> ApiResult<Json<OneRequest>> {
    let id = parse_id(&raw)?;
    let record = existing(&state, id).await?;
    if let Dumps::S3(s3) = state.gateway.dumps() {
        let total = put_object(s3, id, body).await?;
        tracing::info!(target: "audit", event = "upgraded-stored", request = id, bytes = total, "upgraded file stored");
        return Ok(Json(OneRequest {
            failures: Vec::new(),
            request: view(&state, &record).await,
        }));
    }
    let path = state.gateway.upgraded_path(id);
    let dir = path
        .parent()
        .map(|p| p.to_path_buf())
        .ok_or_else(|| ApiError::storage("no request directory"))?;
    private::create_dir(&dir).map_err(ApiError::storage)?;
    // Stream into a temporary file and rename it into place: a download never sees a
    // half-written upgraded dump, and a failed upload leaves the old one.
    let tmp = tempfile::Builder::new()
        .prefix(".upgraded.")
        .permissions(private::file_permissions())
        .tempfile_in(&dir)
        .map_err(ApiError::storage)?;
    let (std_file, tmp_path) = tmp.into_parts();
    let mut file = tokio::fs::File::from_std(std_file);
    let mut stream = body.into_data_stream();
    let forever = std::future::pending();
    let (total, streamed) =
        write_body(&mut stream, &mut file, |_, _| Admit::All, |_| {}, forever).await;
    streamed.map_err(Stop::into_api)?;
    file.sync_all().await.map_err(ApiError::storage)?;
    drop(file);
    tmp_path
        .persist(&path)
        .map_err(|e| ApiError::storage(e.error))?;
    tokio::task::spawn_blocking(move || sync_dir_io(&dir))
        .await
        .map_err(ApiError::storage)?
        .map_err(ApiError::storage)?;
    tracing::info!(target: "audit", event = "upgraded-stored", request = id, bytes = total, "upgraded file stored");
    Ok(Json(OneRequest {
        failures: Vec::new(),
        request: view(&state, &record).await,
    }))
}

/// Streams `body` into a new multipart upload of the upgraded object, completed (so
/// replacing the old object whole) only once the body ended well.
async fn put_object(s3: &Arc<S3Dumps>, id: u64, body: Body) -> ApiResult<u64> {
    let (s3, open) = (s3.clone(), s3.clone());
    let writer = tokio::task::spawn_blocking(move || open.writer(id, Object::Upgraded, true))
        .await
        .map_err(ApiError::storage)?
        .map_err(ApiError::storage)?;
    let mut sink = ObjectSink(Some(writer));
    let mut stream = body.into_data_stream();
    let forever = std::future::pending();
    let (total, streamed) =
        write_body(&mut stream, &mut sink, |_, _| Admit::All, |_| {}, forever).await;
    let Some(writer) = sink.0.take() else {
        return Err(ApiError::storage("the upload's writer is gone"));
    };
    drop(s3);
    let done = tokio::task::spawn_blocking(move || match streamed {
        Ok(()) => writer.finish().map_err(Stop::Io),
        Err(stop) => {
            writer.abandon();
            Err(stop)
        }
    });
    done.await
        .map_err(ApiError::storage)?
        .map_err(Stop::into_api)?;
    Ok(total)
}

/// A single byte range `start..=end` resolved against a file of `len` bytes, from a
/// `Range` header `bytes=START-[END]` or `bytes=-SUFFIX` (decimal digits only, spaces or
/// tabs allowed around the parts: the pattern `get_original`'s spec gives).
pub fn parse_range(h: &str, len: u64) -> Option<(u64, u64)> {
    let ows: &[char] = &[' ', '\t'];
    let spec = h.trim_matches(ows).strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim_matches(ows), b.trim_matches(ows));
    let number = |t: &str| {
        (!t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()))
            .then(|| t.parse::<u64>().ok())
            .flatten()
    };
    let (start, end) = if a.is_empty() {
        let n = number(b)?;
        if n == 0 {
            return None;
        }
        (len.saturating_sub(n), len.checked_sub(1)?)
    } else {
        let start = number(a)?;
        let end = if b.is_empty() {
            len.checked_sub(1)?
        } else {
            number(b)?.min(len.checked_sub(1)?)
        };
        (start, end)
    };
    (start <= end && start < len).then_some((start, end))
}

#[utoipa::path(
    get,
    path = "/v1/requests/{id}/original",
    tag = "files",
    summary = "Download the customer's upload",
    operation_id = "getOriginal",
    description = "The upload as it is now (it may still grow). One `Range: bytes=...` range is served as 206.",
    params(
        RequestIdPath,
        ("Range" = Option<String>, Header, pattern = r"^[ \t]*bytes=[ \t]*([0-9]+[ \t]*-[ \t]*[0-9]*|-[ \t]*[0-9]+)[ \t]*$", description = "One byte range: `bytes=START-`, `bytes=START-END` or `bytes=-SUFFIX`; one that does not fit the file is answered 416"),
    ),
    responses(
        (status = 200, description = "The whole upload", content_type = "application/octet-stream", body = inline(Dump)),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = inline(Dump),
            headers(("Content-Range" = String, description = "`bytes START-END/LENGTH`"))),
        (status = 404, description = "`ORIGINAL:MISSING`", body = Refusal),
        (status = 416, description = "`RANGE:INVALID`", body = Refusal,
            headers(("Content-Range" = String, description = "`bytes */LENGTH`"))),
    ),
    security(("bearer" = [])),
)]
pub async fn get_original(
    State(state): State<Arc<AdminState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = parse_id(&raw)?;
    existing(&state, id).await?;
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            Failure::new(Reason::OriginalMissing, "nothing was uploaded yet"),
        )
    };
    // On object storage, the object as the last completed upload left it.
    let (file, len) = match state.gateway.dumps() {
        Dumps::S3(s3) => {
            let size = s3.object_size(id, Object::Upload).await;
            (None, size.map_err(ApiError::storage)?.ok_or_else(missing)?)
        }
        Dumps::Local => match tokio::fs::File::open(state.gateway.upload_path(id)).await {
            Ok(f) => {
                let len = f.metadata().await.map_err(ApiError::storage)?.len();
                (Some(f), len)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(ApiError::storage(e)),
        },
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count, content_range) = match range {
        None => (StatusCode::OK, 0, len, None),
        Some(h) => match parse_range(h, len) {
            Some((s, e)) => (
                StatusCode::PARTIAL_CONTENT,
                s,
                e - s + 1,
                Some(format!("bytes {s}-{e}/{len}")),
            ),
            None => {
                let mut resp = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    Failure::new(
                        Reason::RangeInvalid,
                        format!("cannot serve range {h} of a {len}-byte file"),
                    ),
                )
                .into_response();
                if let Ok(v) = format!("bytes */{len}").parse() {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(resp);
            }
        },
    };
    let body = match (file, state.gateway.dumps()) {
        (Some(mut file), _) => {
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(ApiError::storage)?;
            Body::from_stream(ReaderStream::with_capacity(file.take(count), 256 * 1024))
        }
        (None, Dumps::S3(s3)) if count > 0 => {
            let stream = s3
                .stream(id, Object::Upload, Some(start..start + count))
                .await;
            Body::from_stream(stream.map_err(ApiError::storage)?)
        }
        (None, _) => Body::empty(),
    };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(cr) = content_range {
        resp = resp.header(header::CONTENT_RANGE, cr);
    }
    resp.body(body).map_err(ApiError::storage)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-4", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=0-", 0), None);
        assert_eq!(parse_range(" bytes=\t1 - 2 ", 100), Some((1, 2)));
        for bad in [
            "bytes=+5-",
            "bytes=5-+9",
            "bytes=- 0",
            "bytes=-",
            "bytes=٣-",
            "null",
            "bytes=0x1-",
        ] {
            assert_eq!(parse_range(bad, 100), None, "{bad}");
        }
    }
}
