//! A small HTTP/1.1 client (`http://` and `https://`) for the upload hook and the operator
//! CLI. `https://` servers are verified against the system's root store (read with
//! rustls-native-certs: the distribution's CA bundle, which the operator keeps and can
//! extend, rather than a list compiled into the binary) plus an optional CA file, set once
//! per process with [`init_tls`]; without that call, the system's roots alone are used.
//! rustls with the `ring` provider, as for the listener (admin/tls.rs says why).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

pub type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "bad URL {0}: only http://host[:port]/path and https://host[:port]/path are supported"
    )]
    Url(String),
    #[error("request failed: {0}")]
    Send(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("CA file {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the https:// roots were already set for this process")]
    AlreadySet,
}

/// The client every request uses: plain HTTP, or TLS with the roots of [`init_tls`]. One
/// client for the process, so that its connections are kept and reused: the hook POSTs
/// each event, and a client per request paid a TCP (and TLS) handshake for every one.
static CLIENT: OnceLock<HttpClient> = OnceLock::new();

pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Idle connections kept per host: the hook has at most `--hook-concurrency` (16) POSTs
/// in flight by default; more than that are closed when they go idle.
const IDLE_PER_HOST: usize = 16;

/// How many root certificates [`init_tls`] trusts, by origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roots {
    pub system: usize,
    pub extra: usize,
}

/// Sets the roots `https://` requests are verified against for the rest of the process:
/// the system's store plus the CA certificates in `extra_ca` (PEM). Call it once, before
/// the first request; an unreadable or empty CA file is an error.
pub fn init_tls(extra_ca: Option<&Path>) -> Result<Roots, HttpError> {
    let (connector, roots) = connector(extra_ca)?;
    CLIENT
        .set(client(connector))
        .map_err(|_| HttpError::AlreadySet)?;
    Ok(roots)
}

fn connector(extra_ca: Option<&Path>) -> Result<(HttpsConnector<HttpConnector>, Roots), HttpError> {
    let mut store = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "cannot read some of the system's root certificates");
    }
    let (system, _) = store.add_parsable_certificates(native.certs);
    let mut extra = 0;
    if let Some(path) = extra_ca {
        let ca_err = |message: String| HttpError::Ca {
            path: path.to_path_buf(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect())
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM certificate in it".into()));
        }
        for cert in certs {
            store
                .add(cert)
                .map_err(|e| ca_err(format!("not a usable CA certificate: {e}")))?;
            extra += 1;
        }
    }
    if system + extra == 0 {
        tracing::warn!("no root certificates: every https:// request will be refused");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(store)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    Ok((connector, Roots { system, extra }))
}

fn client(connector: HttpsConnector<HttpConnector>) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(IDLE_PER_HOST)
        .build(connector)
}

/// The process's pooled client (the roots of [`init_tls`]) for callers that build their own
/// requests and read their own errors: the S3 storage's transport (src/s3/transport.rs),
/// so that S3 shares this one TLS set-up.
pub(crate) fn pooled() -> Result<HttpClient, HttpError> {
    https()
}

/// The client of [`init_tls`], or one with the system's roots if it was not called.
fn https() -> Result<HttpClient, HttpError> {
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    let (c, _) = connector(None)?;
    // Another thread may have set it meanwhile: either is the system's roots, or its own.
    Ok(CLIENT.get_or_init(|| client(c)).clone())
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Sends one request; `timeout` bounds the time to the response head (the TLS handshake
/// included).
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
    timeout: Duration,
) -> Result<Response<Incoming>, HttpError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(HttpError::Url(url.to_string()));
    }
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body)
        .map_err(|_| HttpError::Url(url.to_string()))?;
    let client = https()?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(HttpError::Send(error_chain(&e))),
        Err(_) => Err(HttpError::Timeout(timeout)),
    }
}

/// An error with its causes: hyper's own message ("client error (Connect)") hides why a
/// TLS connection failed (an unknown issuer, say), which is in its sources.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads a whole (small) response body.
pub async fn body_bytes(resp: Response<Incoming>) -> Result<Bytes, HttpError> {
    resp.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| HttpError::Send(e.to_string()))
}
