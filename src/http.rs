//! A small HTTP/1.1 client (plain `http://` only) for the upload hook and the operator CLI.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {0}: only http://host[:port]/path is supported")]
    Url(String),
    #[error("request failed: {0}")]
    Send(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Sends one request; `timeout` bounds the time to the response head.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
    timeout: Duration,
) -> Result<Response<Incoming>, HttpError> {
    if !url.starts_with("http://") {
        return Err(HttpError::Url(url.to_string()));
    }
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body)
        .map_err(|_| HttpError::Url(url.to_string()))?;
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(HttpError::Send(e.to_string())),
        Err(_) => Err(HttpError::Timeout(timeout)),
    }
}

/// Reads a whole (small) response body.
pub async fn body_bytes(resp: Response<Incoming>) -> Result<Bytes, HttpError> {
    resp.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| HttpError::Send(e.to_string()))
}
