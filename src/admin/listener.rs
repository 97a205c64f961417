//! The operator HTTP listener. `axum::serve` puts no bound on a connection, so a client that
//! opens a socket and says nothing, sends its headers a byte at a time, or stops half-way
//! through a body held it open for ever. Here each accepted connection is served by hyper's
//! HTTP/1 builder with a header-read deadline (hyper starts that clock whenever it waits for
//! a request head, so it also ends idle keep-alive connections), each request body gets a
//! progress timeout (no bytes for N seconds; never a total deadline, since the operator
//! streams large dumps), so does each response (write_stall.rs: a client that reads
//! nothing of a download for N seconds is cut off), and a semaphore caps the open connections: the one past the cap is
//! answered 503 and closed at once, so that callers see an explicit reason and can retry,
//! rather than hang in the kernel's backlog.
//!
//! With TLS (tls.rs) the connection's first byte is peeked, the handshake made, and only
//! then is hyper given the stream; both within the header timeout, from accept on, so a
//! client that says nothing, or stops half-way through its handshake, holds its slot no
//! longer than one that stops half-way through a request head. Plain HTTP sent to the TLS
//! port is answered (in plain HTTP) that the listener speaks HTTPS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use super::tls::Tls;
use super::write_stall::WriteStall;
use crate::api::{Failure, Reason, Refusal};

/// Connections past the cap that are answered over TLS at once (each a handshake, within
/// the header timeout); past these, one is closed without an answer, so a flood past the
/// cap cannot make the listener run handshakes without bound.
const TLS_REFUSALS: usize = 16;

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The bounds on every connection to the listener (see `--http-*` in the README).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// A whole HTTP/1.1 answer with one failure, after which the connection is closed.
fn answer(status: &str, reason: Reason, message: &str) -> Vec<u8> {
    let body = serde_json::to_string(&Refusal {
        failures: vec![Failure::new(reason, message)],
    })
    .unwrap_or_default();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What the connection past the cap is told before it is closed.
fn refusal() -> Vec<u8> {
    answer(
        "503 Service Unavailable",
        Reason::HttpTooManyConnections,
        "the operator API has too many open connections; retry shortly",
    )
}

/// Accepts until `shutdown`; each connection runs on `tracker`, so that stopping the gateway
/// waits for requests in flight (each told to close once its answer is sent).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tls_refusals = Arc::new(Semaphore::new(TLS_REFUSALS));
    let acceptor = tls.map(|t| t.acceptor());
    let refusal = refusal();
    let (mut refused, mut last_logged) = (0u64, None);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, typically: back off rather than spin.
                tracing::warn!(error = %e, "admin API cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Taken here, in accept order, so that the cap is exact.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // One line a second at most, however fast they come (a flood must not fill the log).
            refused += 1;
            if last_logged.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(peer = %peer, max = limits.max_connections, refused, "admin API connections refused: too many open");
                last_logged = Some(Instant::now());
                refused = 0;
            }
            match &acceptor {
                // A fresh socket's send buffer always holds these few bytes: this never
                // blocks.
                None => drop(stream.try_write(&refusal)),
                Some(acceptor) => {
                    if let Ok(slot) = tls_refusals.clone().try_acquire_owned() {
                        tracker.spawn(refuse_over_tls(
                            acceptor.clone(),
                            stream,
                            refusal.clone(),
                            limits.header_timeout,
                            slot,
                        ));
                    }
                }
            }
            continue;
        };
        tracker.spawn(connection(
            stream,
            peer,
            app.clone(),
            limits,
            acceptor.clone(),
            shutdown.clone(),
            permit,
        ));
    }
}

/// The 503 of a connection past the cap, over TLS; given up at `limit`.
async fn refuse_over_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    refusal: Vec<u8>,
    limit: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let _ = tokio::time::timeout(limit, async {
        let mut tls = acceptor.accept(stream).await?;
        tls.write_all(&refusal).await?;
        tls.shutdown().await
    })
    .await;
}

/// Why a connection to the TLS listener ended before any request.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("no TLS handshake within {0:?}")]
    Timeout(Duration),
    #[error("plain HTTP sent to the HTTPS listener")]
    PlainHttp,
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
    #[error("closed before the TLS handshake")]
    Closed,
}

/// The TLS stream of `stream`, its handshake made within the header timeout from now.
/// Plain HTTP is answered, in plain HTTP, with a failure saying to use https.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    limits: HttpLimits,
) -> Result<tokio_rustls::server::TlsStream<WriteStall>, HandshakeError> {
    let limit = limits.header_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => return Err(HandshakeError::Timeout(limit)),
        Ok(Ok(0)) | Ok(Err(_)) => return Err(HandshakeError::Closed),
        Ok(Ok(_)) => {}
    }
    let mut stream = WriteStall::new(stream, limits.body_timeout);
    if first[0] != TLS_HANDSHAKE {
        let _ = tokio::time::timeout_at(deadline, plain_http_refusal(&mut stream)).await;
        return Err(HandshakeError::PlainHttp);
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Err(_) => Err(HandshakeError::Timeout(limit)),
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Ok(Ok(tls)) => Ok(tls),
    }
}

/// Reads the plain request's start, answers 400, and drains a little of the rest before
/// closing, so that the kernel does not reset the connection (and the answer with it)
/// over unread bytes.
async fn plain_http_refusal(stream: &mut WriteStall) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let _ = stream.read(&mut buf).await?;
    let refusal = answer(
        "400 Bad Request",
        Reason::HttpTlsRequired,
        "this listener speaks HTTPS: use an https:// URL",
    );
    stream.write_all(&refusal).await?;
    stream.shutdown().await?;
    let mut drained = 0;
    while drained < 64 * 1024 {
        match stream.read(&mut buf).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        let io = WriteStall::new(stream, limits.body_timeout);
        return serve_http(io, peer, app, limits, shutdown).await;
    };
    let handshake = tokio::select! {
        h = handshake(&acceptor, stream, limits) => h,
        _ = shutdown.cancelled() => return,
    };
    match handshake {
        Ok(tls) => serve_http(tls, peer, app, limits, shutdown).await,
        Err(e) => tracing::debug!(peer = %peer, error = %e, "admin API connection ended"),
    }
}

/// Serves HTTP/1.1 on `io` (a socket, or a TLS stream on one) until the client is done,
/// a timeout hits, or `shutdown`.
async fn serve_http<S>(
    io: S,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(|body| axum::body::Body::new(TimeoutBody::new(body_timeout, body)));
        // What `into_make_service_with_connect_info` would give handlers.
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            // Finish the request in flight, if any, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "admin API connection ended");
    }
}
