//! The SSH side: russh configuration, the accept loop (connection cap, login grace time,
//! graceful shutdown) and the per-connection handler. With the PROXY protocol on, a
//! balancer's connection gives its header first and is then screened and served as the
//! client it names (see `proxied`).

mod algorithms;
mod channel;
mod connection;
mod forward;
mod handler;
mod hangup;
mod penalty;
mod proxied;
mod readahead;
mod settings;
mod shards;
mod sources;
mod watchdog;

pub use algorithms::{AlgorithmError, AlgorithmOverrides, AlgorithmSet, Algorithms};
pub use penalty::PenaltyPolicy;
pub use proxied::ProxyPolicy;
pub use settings::SshSettings;
pub use sources::SourcePolicy;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::proxy_protocol::read_header;
use crate::ratelog::{LogBudget, Verdict};
use penalty::Penalties;
use settings::russh_config;
use shards::Shards;
use sources::{SourceGuard, Sources};

/// How long a balancer may take to send the PROXY header (at most the login grace time).
/// A balancer sends it at once, before any of the client's bytes; a connection that holds
/// a slot of the global cap without one is a broken balancer, not a slow client.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The threads connections run on (see `shards`).
    shards: Shards,
}

impl SshServer {
    pub fn new(gateway: Arc<Gateway>, settings: &SshSettings) -> std::io::Result<Arc<SshServer>> {
        // One shard a core. A session takes up to two blocking threads (requests; READ
        // replies) while it has work, and any shard may end up with most of the
        // connections, so each may start that many for the whole connection limit.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let blocking = settings
            .max_connections
            .saturating_mul(2)
            .saturating_add(64);
        let shards = Shards::start(cores, blocking)?;
        Ok(Arc::new(SshServer {
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
            shards,
        }))
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
            // Off this runtime's reactor, onto the shard's (see `shards`).
            let socket = match socket.into_std() {
                Ok(socket) => socket,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand the connection over");
                    Metrics::dec(&metrics.connections_current);
                    continue;
                }
            };
            self.shards.spawn(&tracker, move || {
                async move {
                    match TcpStream::from_std(socket) {
                        Ok(socket) => {
                            server
                                .admit(socket, peer, source, session, close, accepted)
                                .await
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot take the connection over"),
                    }
                    Metrics::dec(&server.gateway.metrics.connections_current);
                    drop(permit);
                }
                .instrument(span)
            });
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
}
