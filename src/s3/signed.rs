//! The S3 calls object_store does not have, made by hand: UploadPartCopy with a source
//! range, ListMultipartUploads (followed through its pages), and a one-key ListObjectsV2
//! to check the bucket and the credentials at start-up. They are signed with
//! object_store's own public SigV4 signer (`AwsAuthorizer`, ring underneath) and the
//! credentials of the same `AmazonS3`, so that one provider, refreshed by object_store,
//! signs everything; no second SigV4 crate (aws-sigv4 would bring aws-smithy-* for the
//! same hundred lines) is needed. They are sent through transport.rs like the rest.
//!
//! Both calls are idempotent (a part number copied twice is the second copy), so
//! transport failures, 5xx, 429 and S3's 200-with-an-error-body (InternalError, SlowDown)
//! are retried a few times with backoff.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{Method, StatusCode};
use object_store::aws::AwsAuthorizer;
use object_store::client::{HttpErrorKind, HttpRequestBody};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::{code_in, from_code, S3Error};
use super::transport::HEAD_BASE;
use super::{PendingUpload, S3};

/// The characters S3's signing leaves as they are: letters, digits and `-._~`.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// The same in a key's path, where `/` stays.
const PATH: &AsciiSet = &QUERY.remove(b'/');

/// The largest source range one UploadPartCopy may copy.
pub const MAX_COPY: u64 = 5 << 30;
/// The slowest server-side copy rate allowed on top of [`HEAD_BASE`]: 8 MiB/s (S3 copies
/// within a region at hundreds of MiB/s).
const COPY_MIN_RATE: u64 = 8 << 20;
/// Attempts per call, and the first backoff (quadrupled each time).
const ATTEMPTS: u32 = 4;
const BACKOFF: Duration = Duration::from_millis(100);
/// The largest response body read (a page of 1,000 uploads is about 600 KiB).
const MAX_BODY: usize = 16 << 20;

pub fn encode_path(key: &str) -> String {
    utf8_percent_encode(key, PATH).to_string()
}

fn encode(value: &str) -> String {
    utf8_percent_encode(value, QUERY).to_string()
}

/// What a signed call was, for its errors.
struct Op<'a> {
    name: &'a str,
    key: &'a str,
    upload: Option<&'a str>,
}

impl Op<'_> {
    fn other(&self, why: impl std::fmt::Display) -> S3Error {
        S3Error::Other(format!("{} {}: {why}", self.name, self.key))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CopyPartResult {
    #[serde(rename = "ETag")]
    e_tag: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<Upload>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Upload {
    key: String,
    upload_id: String,
    initiated: String,
}

/// The key and upload id markers that ask for the page after them.
type Markers = (String, String);

/// One page of ListMultipartUploads: its uploads, and the markers of the next page when
/// it is truncated.
fn parse_uploads(xml: &[u8]) -> Result<(Vec<PendingUpload>, Option<Markers>), String> {
    let page: ListMultipartUploadsResult =
        quick_xml::de::from_reader(xml).map_err(|e| format!("unreadable answer: {e}"))?;
    let mut out = Vec::with_capacity(page.uploads.len());
    for u in page.uploads {
        let initiated = OffsetDateTime::parse(&u.initiated, &Rfc3339)
            .map_err(|e| format!("upload {}: Initiated {:?}: {e}", u.upload_id, u.initiated))?;
        out.push(PendingUpload {
            key: u.key,
            upload_id: u.upload_id,
            initiated,
        });
    }
    let next = if page.is_truncated {
        match (page.next_key_marker, page.next_upload_id_marker) {
            (Some(k), Some(u)) => Some((k, u)),
            _ => {
                return Err("a truncated page without NextKeyMarker and NextUploadIdMarker".into())
            }
        }
    } else {
        None
    };
    Ok((out, next))
}

impl S3 {
    /// Makes part `number` of `upload_id` a server-side copy of `range` of the object
    /// `source_key` (at most [`MAX_COPY`], 5 GiB): UploadPartCopy. Returns its ETag.
    pub async fn copy_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        source_key: &str,
        range: Range<u64>,
    ) -> Result<String, S3Error> {
        let op = Op {
            name: "copy_part",
            key,
            upload: Some(upload_id),
        };
        super::path(key)?;
        super::check_part_number(number).map_err(|e| op.other(e))?;
        super::path(source_key)?;
        if range.start >= range.end || range.end - range.start > MAX_COPY {
            return Err(op.other(format!(
                "source range {range:?}: must be non-empty and at most 5 GiB"
            )));
        }
        let url = format!(
            "{}/{}?partNumber={number}&uploadId={}",
            self.inner.bucket_url,
            encode_path(key),
            encode(upload_id)
        );
        let source = format!("{}/{}", self.inner.bucket, encode_path(source_key));
        let source_range = format!("bytes={}-{}", range.start, range.end - 1);
        let timeout = HEAD_BASE + Duration::from_secs((range.end - range.start) / COPY_MIN_RATE);
        let headers = [
            ("x-amz-copy-source", source.as_str()),
            ("x-amz-copy-source-range", source_range.as_str()),
        ];
        let body = self
            .signed(&op, Method::PUT, &url, &headers, timeout)
            .await
            .map_err(|e| match e {
                // NoSuchKey here is the source's.
                S3Error::NotFound(_) => S3Error::NotFound(source_key.to_string()),
                e => e,
            })?;
        let result: CopyPartResult = quick_xml::de::from_reader(body.as_ref())
            .map_err(|e| op.other(format!("unreadable CopyPartResult: {e}")))?;
        Ok(result.e_tag)
    }

    /// ListMultipartUploads under the key prefix `prefix`, every page.
    pub(super) async fn signed_list_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<PendingUpload>, S3Error> {
        let op = Op {
            name: "list_uploads",
            key: prefix,
            upload: None,
        };
        let mut all = Vec::new();
        let mut markers: Option<Markers> = None;
        loop {
            let mut url = format!(
                "{}?uploads=&prefix={}",
                self.inner.bucket_url,
                encode(prefix)
            );
            if let Some((k, u)) = &markers {
                url.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    encode(k),
                    encode(u)
                ));
            }
            let body = self.signed(&op, Method::GET, &url, &[], HEAD_BASE).await?;
            let (page, next) = parse_uploads(&body).map_err(|e| op.other(e))?;
            all.extend(page);
            match next {
                Some(n) if markers.as_ref() == Some(&n) => {
                    return Err(op.other("the server repeated a page's markers"))
                }
                Some(n) => markers = Some(n),
                None => return Ok(all),
            }
        }
    }

    /// A ListObjectsV2 of at most one key under the prefix: answers only if the bucket
    /// exists and the credentials may list it.
    pub(super) async fn signed_check(&self) -> Result<(), S3Error> {
        let prefix = self.key("");
        let what = format!("s3://{}/{prefix}", self.inner.bucket);
        let op = Op {
            name: "check",
            key: &what,
            upload: None,
        };
        let url = format!(
            "{}?list-type=2&max-keys=1&prefix={}",
            self.inner.bucket_url,
            encode(&prefix)
        );
        self.signed(&op, Method::GET, &url, &[], HEAD_BASE)
            .await
            .map(|_| ())
    }

    /// Signs and sends one bodiless request, retrying what may be retried; returns the
    /// body of a success that holds no S3 error.
    async fn signed(
        &self,
        op: &Op<'_>,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Bytes, S3Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= ATTEMPTS;
            let retry = match self.signed_once(op, &method, url, headers, timeout).await {
                Ok(Outcome::Done(body)) => return Ok(body),
                Ok(Outcome::Failed(e)) => return Err(e),
                Ok(Outcome::Retry(e)) | Err(e) if last => return Err(e),
                Ok(Outcome::Retry(e)) | Err(e) => e,
            };
            let pause = BACKOFF * 4u32.pow(attempt - 1);
            tracing::info!(op = op.name, key = op.key, error = %retry, ?pause, "S3 call failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    async fn signed_once(
        &self,
        op: &Op<'_>,
        method: &Method,
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Outcome, S3Error> {
        let mut builder = hyper::Request::builder().method(method.clone()).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let mut req = builder
            .body(HttpRequestBody::empty())
            .map_err(|e| op.other(format!("bad request: {e}")))?;
        let credential = self
            .inner
            .store
            .credentials()
            .get_credential()
            .await
            .map_err(|e| op.other(format!("no credentials: {e}")))?;
        AwsAuthorizer::new(&credential, "s3", &self.inner.region)
            .try_authorize(&mut req, None)
            .map_err(|e| op.other(format!("signing: {e}")))?;
        let resp = match self.inner.transport.send(req, timeout).await {
            Ok(r) => r,
            // Connect errors, timeouts and cut connections: the calls are idempotent.
            Err(e) => {
                let retry = matches!(
                    e.kind(),
                    HttpErrorKind::Connect
                        | HttpErrorKind::Request
                        | HttpErrorKind::Timeout
                        | HttpErrorKind::Interrupted
                );
                let err = op.other(crate::http::error_chain(&e));
                return Ok(if retry {
                    Outcome::Retry(err)
                } else {
                    Outcome::Failed(err)
                });
            }
        };
        let status = resp.status();
        let body = match Limited::new(resp.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Ok(Outcome::Retry(op.other(format!("reading the answer: {e}")))),
        };
        let text = String::from_utf8_lossy(&body);
        let code = if text.contains("<Error>") {
            code_in(&text)
        } else {
            None
        };
        let retryable = status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || matches!(
                code,
                Some("InternalError" | "SlowDown" | "ServiceUnavailable")
            );
        let err = match code {
            Some(c) => {
                let message = text
                    .split_once("<Message>")
                    .and_then(|(_, m)| m.split_once("</Message>"))
                    .map_or("", |(m, _)| m);
                from_code(op.name, op.key, op.upload, c, message)
            }
            None if status.is_success() => return Ok(Outcome::Done(body)),
            None if status == StatusCode::NOT_FOUND => S3Error::NotFound(op.key.to_string()),
            None => op.other(format!("HTTP {status}")),
        };
        Ok(if retryable {
            Outcome::Retry(err)
        } else {
            Outcome::Failed(err)
        })
    }
}

enum Outcome {
    Done(Bytes),
    Retry(S3Error),
    Failed(S3Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_of_uploads() {
        let page = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>dumps</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/b</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
  <MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/a</Key><UploadId>u1</UploadId><Initiator><ID>x</ID></Initiator>
    <StorageClass>STANDARD</StorageClass><Initiated>2026-12-02T14:24:51.000Z</Initiated></Upload>
  <Upload><Key>p/b</Key><UploadId>u2</UploadId><Initiated>2026-12-02T14:25:00Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let (uploads, next) = parse_uploads(page).unwrap();
        assert_eq!(next, Some(("p/b".to_string(), "u2".to_string())));
        assert_eq!(uploads.len(), 2);
        assert_eq!(uploads[0].key, "p/a");
        assert_eq!(uploads[0].upload_id, "u1");
        assert_eq!(uploads[0].initiated.unix_timestamp(), 1_796_221_491);
        let last = br#"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"#;
        let (uploads, next) = parse_uploads(last).unwrap();
        assert!(uploads.is_empty() && next.is_none());
        let broken = br#"<ListMultipartUploadsResult><IsTruncated>true</IsTruncated></ListMultipartUploadsResult>"#;
        assert!(parse_uploads(broken).is_err());
    }

    #[test]
    fn keys_are_encoded_as_s3_signs_them() {
        assert_eq!(encode_path("a b/c+d~e"), "a%20b/c%2Bd~e");
        assert_eq!(encode("a/b=c"), "a%2Fb%3Dc");
    }
}
