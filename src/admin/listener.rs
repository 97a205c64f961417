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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use super::write_stall::WriteStall;
use crate::api::{Failure, Reason, Refusal};

/// The bounds on every connection to the listener (see `--http-*` in the README).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// What the connection past the cap is told before it is closed.
fn refusal() -> Vec<u8> {
    let body = serde_json::to_string(&Refusal {
        failures: vec![Failure::new(
            Reason::HttpTooManyConnections,
            "the operator API has too many open connections; retry shortly",
        )],
    })
    .unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Accepts until `shutdown`; each connection runs on `tracker`, so that stopping the gateway
/// waits for requests in flight (each told to close once its answer is sent).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
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
            // A fresh socket's send buffer always holds these few bytes: this never blocks.
            let _ = stream.try_write(&refusal);
            continue;
        };
        tracker.spawn(connection(
            stream,
            peer,
            app.clone(),
            limits,
            shutdown.clone(),
            permit,
        ));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
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
    let io = TokioIo::new(WriteStall::new(stream, limits.body_timeout));
    let conn = builder.serve_connection(io, service);
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
