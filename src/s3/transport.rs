//! The HTTP transport under every S3 request: object_store's own calls (through its
//! `HttpConnector`/`HttpService` hooks) and the signed calls of `signed.rs` go through
//! crate::http's pooled hyper client, so S3 needs no reqwest, no second rustls set-up and
//! no second crypto provider (Cargo.toml says why ring alone). Request bodies are handed
//! to hyper frame by frame as the `Bytes` they arrived in: a part is never copied here.
//!
//! Every request is bounded in time: the response head must arrive within
//! [`HEAD_BASE`] plus the body's length at [`MIN_RATE`] (a 16 MiB part gets 94 s), and a
//! response body that stalls for [`IDLE`] while it is being read fails. object_store's
//! retries are bounded too (mod.rs, `retry_config`), so every call ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::ClientOptions;
use tokio::time::{Instant, Sleep};

use crate::http::{error_chain, pooled};

/// Time for the response head to arrive when the request has no body: connect, TLS, and
/// the server's own work (S3 answers a HEAD or a small GET in well under a second).
pub const HEAD_BASE: Duration = Duration::from_secs(30);
/// The slowest upload rate allowed on top of [`HEAD_BASE`]: 256 KiB/s.
pub const MIN_RATE: u64 = 256 * 1024;
/// How long a response body may stall while it is read.
pub const IDLE: Duration = Duration::from_secs(30);

/// The deadline for a response head after sending `body_len` bytes.
pub fn head_timeout(body_len: u64) -> Duration {
    HEAD_BASE + Duration::from_secs(body_len / MIN_RATE)
}

/// object_store's factory for [`Transport`].
#[derive(Debug, Default)]
pub struct Connector;

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Transport))
    }
}

/// Sends one request through crate::http's pooled client.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transport;

#[async_trait::async_trait]
impl HttpService for Transport {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let timeout = head_timeout(req.body().content_length() as u64);
        self.send(req, timeout).await
    }
}

impl Transport {
    /// Sends `req`, waiting at most `timeout` for the response head.
    pub async fn send(
        &self,
        req: HttpRequest,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let client = pooled().map_err(|e| HttpError::new(HttpErrorKind::Connect, e))?;
        // The body's frames are its own `Bytes`; map_err only retypes the error.
        let req = req.map(|b| b.map_err(std::io::Error::other).boxed());
        let resp = match tokio::time::timeout(timeout, client.request(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                // A connect failure means nothing was sent: object_store retries those
                // for any request. Anything else may have reached the server.
                let kind = if e.is_connect() {
                    HttpErrorKind::Connect
                } else {
                    HttpErrorKind::Interrupted
                };
                return Err(HttpError::new(kind, Message(error_chain(&e))));
            }
            Err(_) => {
                return Err(HttpError::new(
                    HttpErrorKind::Timeout,
                    Message(format!("no response within {timeout:?}")),
                ))
            }
        };
        Ok(resp.map(|body| HttpResponseBody::new(Idle::new(body))))
    }
}

/// An error text (hyper's own error hides its causes in its sources).
#[derive(Debug)]
struct Message(String);

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

/// A response body that fails when it stalls for [`IDLE`] while polled. The clock runs only
/// while the reader waits for the server: a reader that stops polling (its own consumer
/// is slow) is not timed out for that.
struct Idle {
    inner: Incoming,
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
}

impl Idle {
    fn new(inner: Incoming) -> Idle {
        Idle {
            inner,
            sleep: Box::pin(tokio::time::sleep(IDLE)),
            waiting: false,
        }
    }
}

impl Body for Idle {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        if !this.waiting {
            this.sleep.as_mut().reset(Instant::now() + IDLE);
            this.waiting = true;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| {
                    f.map_err(|e| {
                        HttpError::new(HttpErrorKind::Interrupted, Message(error_chain(&e)))
                    })
                }))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::new(
                    HttpErrorKind::Timeout,
                    Message(format!("the response body stalled for {IDLE:?}")),
                )))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_gets_time_for_its_size() {
        assert_eq!(head_timeout(0), Duration::from_secs(30));
        assert_eq!(head_timeout(16 << 20), Duration::from_secs(94));
    }
}
