//! One connection's life once it is admitted: socket options, the SSH handshake within the
//! login grace time, the watch for the grace time, idleness and the server's close, the
//! orderly end (the SFTP task syncs its files, the client is told why, the socket is
//! severed as a last resort), and the penalty verdict on the way out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::server::run_stream;
use russh::Disconnect;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::handler::SshHandler;
use super::hangup;
use super::proxied::Guarded;
use super::readahead::ReadAhead;
use super::settings::WINDOW;
use super::sources::SourceGuard;
use super::watchdog::{Progress, Watched};
use super::SshServer;
use crate::metrics::Metrics;
use crate::ratelog::Verdict;
use crate::sftp::HangupProbe;

/// How long a closing session may take to flush its files before it is cut.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection state shared between the accept loop's task and the russh handler.
pub(crate) struct Conn {
    /// Cancelled to close the connection in order (shutdown, revoked grant, idle): the
    /// SFTP task stops and syncs its files, then the client is told why. See `sever` in
    /// [`SshServer::connection`] for the last resort.
    pub close: CancellationToken,
    /// Its place among its source's connections.
    pub source: SourceGuard,
    pub authenticated: AtomicBool,
    /// Whether the client tried to authenticate at all.
    pub auth_attempted: AtomicBool,
    /// The SFTP task, awaited before disconnecting so that its files are synced.
    pub sftp: Mutex<Option<JoinHandle<()>>>,
    /// Whether the client has hung up, for the SFTP session (see [`hangup`]).
    pub hung_up: HangupProbe,
}

impl SshServer {
    /// Serves one connection of `peer`, the client. `armed`: refuse a PROXY header at the
    /// start of the stream (the PROXY protocol is on and this is not a balancer).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn connection(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
        session: u64,
        close: CancellationToken,
        source: SourceGuard,
        accepted: Instant,
        armed: bool,
    ) {
        let conn = Arc::new(Conn {
            close,
            source,
            authenticated: AtomicBool::new(false),
            auth_attempted: AtomicBool::new(false),
            sftp: Mutex::new(None),
            hung_up: hangup::probe(&socket),
        });
        // Replies are small and latency-bound: never let Nagle hold them back.
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        // A receive buffer the size of the SSH window lets an uploading client keep sending
        // while this connection's task waits for a core; autotuning stopped near 600 KiB and
        // the client then waited too (uploads ~5% faster on 2 cores, measured). The window
        // still bounds what a client can have in flight.
        if let Err(e) = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, WINDOW as usize)
        {
            tracing::debug!(error = %e, "SO_RCVBUF failed");
        }
        let progress = Progress::new();
        // Cancelled as a last resort, when a client does not read the disconnect: every
        // read and write of the socket under russh fails, which ends its session loop.
        let sever = CancellationToken::new();
        let socket = Guarded::new(socket, armed);
        let forged = socket.forged();
        let socket = ReadAhead::new(Watched::new(socket, progress.clone(), sever.clone()));
        let handler = SshHandler::new(self.gateway.clone(), conn.clone(), peer, session);
        // Counted from the accept, so that reading a PROXY header does not extend it.
        let deadline = tokio::time::Instant::from_std(accepted + self.login_grace);
        // run_stream waits for the client's identification line: bound that by the grace
        // time too, or a silent client would hold a connection slot forever.
        let started = tokio::select! {
            r = tokio::time::timeout_at(deadline, run_stream(self.config.clone(), socket, handler)) => r,
            _ = conn.close.cancelled() => return,
        };
        let running = match started {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => {
                Metrics::inc(&self.gateway.metrics.handshake_errors_total);
                if forged.load(Ordering::Acquire) {
                    let verdict = self.forged_log.lock().map(|mut l| l.check());
                    if let Ok(Verdict::Log { suppressed }) = verdict {
                        tracing::warn!(target: "audit", event = "proxy-header-refused", %peer, suppressed, "PROXY header from a source not in --proxy-from: refused, its address ignored");
                    }
                    self.penalize(peer);
                    return;
                }
                tracing::debug!(error = %e, "handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(target: "audit", event = "login-timeout", "no identification within the login grace time");
                self.penalize(peer);
                return;
            }
        };
        let handle = running.handle();
        tokio::pin!(running);
        let grace = tokio::time::sleep_until(deadline);
        tokio::pin!(grace);
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        let mut grace_armed = true;
        let reason = loop {
            tokio::select! {
                r = &mut running => {
                    match r {
                        Err(e) => tracing::info!(target: "audit", event = "disconnected", error = %e, "connection ended"),
                        Ok(()) => tracing::info!(target: "audit", event = "disconnected", "connection ended by the client"),
                    }
                    break None;
                }
                _ = &mut grace, if grace_armed => {
                    if conn.authenticated.load(Ordering::Acquire) {
                        grace_armed = false;
                        continue;
                    }
                    break Some("login grace time exceeded");
                }
                _ = watchdog.tick() => {
                    if progress.idle() > self.idle_timeout {
                        break Some("idle timeout");
                    }
                }
                _ = conn.close.cancelled() => break Some("session closed by the server"),
            }
        };
        if let Some(reason) = reason {
            tracing::info!(target: "audit", event = "disconnected", reason, "closed by the server");
            // Stop the SFTP task first: it syncs open files before it ends.
            conn.close.cancel();
            finish_sftp(&conn).await;
            let bye = handle.disconnect(Disconnect::ByApplication, reason.into(), String::new());
            let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
            if tokio::time::timeout(Duration::from_secs(2), &mut running)
                .await
                .is_err()
            {
                // The client does not read: fail the socket under russh to end it.
                sever.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
            }
        }
        conn.close.cancel();
        finish_sftp(&conn).await;
        if conn.authenticated.load(Ordering::Acquire) {
            self.penalties.succeeded(peer.ip());
        } else if conn.auth_attempted.load(Ordering::Acquire) || reason.is_some() {
            self.penalize(peer);
        }
        tracing::debug!("connection closed");
    }

    fn penalize(&self, peer: SocketAddr) {
        if self.penalties.failed(peer.ip()) {
            tracing::warn!(target: "audit", event = "penalty", ip = %peer.ip(), "too many failed connections; refusing this address for a while");
        }
    }
}

/// Waits (bounded) for the connection's SFTP task, which syncs its files as it ends.
async fn finish_sftp(conn: &Conn) {
    let task = conn.sftp.lock().ok().and_then(|mut s| s.take());
    if let Some(task) = task {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, task).await;
    }
}
