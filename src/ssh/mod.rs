//! The SSH side: russh configuration, the accept loop (connection cap, login grace time,
//! graceful shutdown) and the per-connection handler. With the PROXY protocol on, a
//! balancer's connection gives its header first and is then screened and served as the
//! client it names (see `proxied`).

mod algorithms;
mod channel;
mod forward;
mod handler;
mod hangup;
mod penalty;
mod proxied;
mod readahead;
mod sources;
mod watchdog;

pub use algorithms::{AlgorithmError, AlgorithmOverrides, AlgorithmSet, Algorithms};
pub use penalty::PenaltyPolicy;
pub use proxied::ProxyPolicy;
pub use sources::SourcePolicy;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::keys::ssh_key::PrivateKey;
use russh::server::run_stream;
use russh::{Disconnect, MethodKind, MethodSet, Preferred, SshId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::proxy_protocol::read_header;
use crate::ratelog::{LogBudget, Verdict};
use crate::sftp::HangupProbe;
use handler::SshHandler;
use penalty::Penalties;
use proxied::Guarded;
use readahead::ReadAhead;
use sources::{SourceGuard, Sources};
use watchdog::{Progress, Watched};

/// Largest SSH packet a client may send us: 64 KiB carries a 32 KiB SFTP write and its
/// header in one packet (the default 32 KiB split every write in two).
const MAX_PACKET: u32 = 64 * 1024;
/// The SSH window offered to clients; see `russh_config`.
const WINDOW: u32 = 4 * 1024 * 1024;
/// Channel messages russh may queue for a session before it stops reading its socket.
/// With MAX_PACKET this bounds what a stalled session holds in memory (1 MiB).
const CHANNEL_QUEUE: usize = 16;

/// Messages (reply batches of up to 256 KiB, from the SFTP writer) that may wait for the
/// russh session loop; with the one it holds while the client's window is shut this bounds
/// the reply data a session buffers.
const SESSION_QUEUE: usize = 4;

/// How long a closing session may take to flush its files before it is cut.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a balancer may take to send the PROXY header (at most the login grace time).
/// A balancer sends it at once, before any of the client's bytes; a connection that holds
/// a slot of the global cap without one is a broken balancer, not a slow client.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SshSettings {
    /// One per host-key type, in the order of `--host-key-types`.
    pub host_keys: Vec<PrivateKey>,
    pub algorithms: Algorithms,
    pub max_connections: usize,
    pub sources: SourcePolicy,
    pub login_grace: Duration,
    pub idle_timeout: Duration,
    pub penalties: PenaltyPolicy,
    /// `Some`: the PROXY protocol is on, and these are the balancers.
    pub proxy: Option<ProxyPolicy>,
    /// This node's name, in every connection's span.
    pub node: String,
}

/// russh settings: public keys only, the configured algorithm set, no compression.
pub fn russh_config(s: &SshSettings) -> russh::server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    russh::server::Config {
        server_id: SshId::Standard(Cow::Borrowed(concat!(
            "SSH-2.0-sftpgate_",
            env!("CARGO_PKG_VERSION")
        ))),
        methods,
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        // russh signs each exchange with the first key that fits the negotiated host-key
        // algorithm (any RSA key for every rsa-sha2-* name), and offers only those it has.
        keys: s.host_keys.clone(),
        preferred: Preferred {
            kex: Cow::Owned(s.algorithms.kex_with_extensions()),
            key: Cow::Owned(s.algorithms.host_key.clone()),
            cipher: Cow::Owned(s.algorithms.cipher.clone()),
            mac: Cow::Owned(s.algorithms.mac.clone()),
            compression: Cow::Borrowed(&[russh::compression::NONE]),
            ..Preferred::DEFAULT
        },
        max_auth_attempts: 10,
        // Twice OpenSSH's window keeps a fast client from stalling on window adjustments.
        // Not more: with 16 MiB, OpenSSH clients under CPU contention buffered so much that
        // 100 concurrent uploads spent 10x the kernel time and ran 6x slower (measured).
        // russh replenishes the window on receipt, so it does not bound memory: the channel
        // queue does, at CHANNEL_QUEUE messages of at most MAX_PACKET bytes per session.
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        channel_buffer_size: CHANNEL_QUEUE,
        event_buffer_size: SESSION_QUEUE,
        inactivity_timeout: Some(s.idle_timeout),
        nodelay: true,
        ..Default::default()
    }
}

/// What the accept loop and every connection share.
pub struct SshServer {
    pub gateway: Arc<Gateway>,
    pub config: Arc<russh::server::Config>,
    pub login_grace: Duration,
    pub idle_timeout: Duration,
    pub connections: Arc<Semaphore>,
    penalties: Penalties,
    sources: Arc<Sources>,
    /// Refusals at the global cap are logged a few per window, not one line each.
    cap_log: Mutex<LogBudget>,
    proxy: Option<ProxyPolicy>,
    node: Arc<str>,
    /// Balancer connections without a valid header, logged a few per window.
    header_log: Mutex<LogBudget>,
    /// Headers from sources that may not send one, logged a few per window.
    forged_log: Mutex<LogBudget>,
}

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
    pub fn new(gateway: Arc<Gateway>, settings: &SshSettings) -> Arc<SshServer> {
        Arc::new(SshServer {
            gateway,
            config: Arc::new(russh_config(settings)),
            login_grace: settings.login_grace,
            idle_timeout: settings.idle_timeout,
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            penalties: Penalties::new(settings.penalties),
            sources: Sources::new(settings.sources),
            cap_log: Mutex::default(),
            proxy: settings.proxy.clone(),
            node: settings.node.as_str().into(),
            header_log: Mutex::default(),
            forged_log: Mutex::default(),
        })
    }

    /// Whether the client `peer` may connect now (no penalty, within its per-source
    /// limits): its place among its source's connections, or `None` (the refusal logged,
    /// rate-limited).
    fn screen(&self, peer: SocketAddr) -> Option<SourceGuard> {
        if self.penalties.blocked(peer.ip()) {
            tracing::debug!(%peer, "refused: address under penalty");
            return None;
        }
        match self.sources.admit(peer.ip()) {
            Ok(source) => Some(source),
            Err((refusal, verdict)) => {
                if let Verdict::Log { suppressed } = verdict {
                    tracing::warn!(target: "audit", event = "refused", %peer, reason = refusal.reason(), suppressed, "connection refused");
                }
                None
            }
        }
    }

    /// Accepts connections until `shutdown`; each runs on `tracker`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        loop {
            let (socket, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let accepted = Instant::now();
            // A balancer's connection is screened by the client its header names, once it
            // is read: the balancer's own address stands for every client behind it. Only
            // the global cap applies at accept.
            let proxied = self.proxy.as_ref().is_some_and(|p| p.trusts(peer.ip()));
            let source = if proxied {
                None
            } else {
                let Some(source) = self.screen(peer) else {
                    drop(socket);
                    continue;
                };
                Some(source)
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                let verdict = self.cap_log.lock().map(|mut l| l.check());
                if let Ok(Verdict::Log { suppressed }) = verdict {
                    tracing::warn!(target: "audit", event = "refused", %peer, suppressed, "connection limit reached");
                }
                drop(socket);
                continue;
            };
            let session = self.gateway.next_session_id();
            let metrics = &self.gateway.metrics;
            Metrics::inc(&metrics.connections_total);
            Metrics::inc(&metrics.connections_current);
            // `peer` is the client; `via` the balancer it came through, if any.
            let span = tracing::info_span!(
                "session",
                session,
                node = &*self.node,
                peer = tracing::field::Empty,
                via = tracing::field::Empty
            );
            span.record(
                if proxied { "via" } else { "peer" },
                tracing::field::display(peer),
            );
            let server = self.clone();
            let close = shutdown.child_token();
            tracker.spawn(
                async move {
                    server
                        .admit(socket, peer, source, session, close, accepted)
                        .await;
                    Metrics::dec(&server.gateway.metrics.connections_current);
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }

    /// A direct client (`source` given) goes on at once; a balancer's connection first
    /// gives its header, and the client it names is screened and served.
    async fn admit(
        &self,
        mut socket: TcpStream,
        tcp_peer: SocketAddr,
        source: Option<SourceGuard>,
        session: u64,
        close: CancellationToken,
        accepted: Instant,
    ) {
        if let Some(source) = source {
            let armed = self.proxy.is_some();
            self.connection(socket, tcp_peer, session, close, source, accepted, armed)
                .await;
            return;
        }
        let limit = self.login_grace.min(PROXY_HEADER_TIMEOUT);
        let claim = tokio::select! {
            r = read_header(&mut socket, limit) => r,
            _ = close.cancelled() => return,
        };
        let claim = match claim {
            Ok(claim) => claim,
            Err(e) => {
                Metrics::inc(&self.gateway.metrics.handshake_errors_total);
                let verdict = self.header_log.lock().map(|mut l| l.check());
                if let Ok(Verdict::Log { suppressed }) = verdict {
                    tracing::warn!(target: "audit", event = "proxy-header-refused", via = %tcp_peer, error = %e, suppressed, "connection from a --proxy-from source without a valid PROXY header");
                }
                return;
            }
        };
        let peer = claim.or(tcp_peer);
        tracing::Span::current().record("peer", tracing::field::display(peer));
        tracing::debug!(?claim, "PROXY header read");
        let Some(source) = self.screen(peer) else {
            return;
        };
        self.connection(socket, peer, session, close, source, accepted, false)
            .await;
    }

    /// Serves one connection of `peer`, the client. `armed`: refuse a PROXY header at the
    /// start of the stream (the PROXY protocol is on and this is not a balancer).
    #[allow(clippy::too_many_arguments)]
    async fn connection(
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
