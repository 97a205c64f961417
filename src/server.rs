//! `sftpgate serve`: opens the store, loads keys, binds both listeners and runs the SSH
//! server, the operator API and the session sweeper until told to stop.
//!
//! Beside this file in `server/`: `admin_token.rs`, the operator API's token;
//! `dumps.rs`, the dumps' storage and its sweeper.

mod admin_token;
mod dumps;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::api::{PublishedHostKey, ServerInfo};
use crate::config::{Config, StoreSpec};
use crate::events::Events;
use crate::gateway::Gateway;
use crate::hook::{self, HookSettings};
use crate::keys::{fingerprint, load_or_generate_host_keys};
use crate::leases::{LeaseSettings, Leases};
use crate::ssh::{PenaltyPolicy, ProxyPolicy, SourcePolicy, SshServer, SshSettings};
use crate::storage::Dumps;
use crate::store::postgres::{PgLeases, PgOutbox, PgStore};
use crate::store::{
    private, FileOutbox, FileStore, HostKey, LeaseStore, MemoryLeases, Outbox, OutboxLimits, Store,
};
use admin_token::admin_token;
use dumps::{open_dumps, sweep_uploads};

/// How long shutdown waits for sessions to flush and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// A started gateway: its bound addresses and the means to stop it.
pub struct Running {
    pub ssh: SocketAddr,
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    /// Stops accepting, closes sessions (their files synced) and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not close in time");
        }
    }
}

/// Starts everything; returns once both listeners are bound.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    cfg.validate()?;
    private::create_dir(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    // A shared store brings its own leases and outbox; one node alone keeps its leases in
    // memory and its outbox in the data directory.
    let mut pool = None;
    let (store, lease_store): (Arc<dyn Store>, Arc<dyn LeaseStore>) = match &cfg.store {
        StoreSpec::File => (
            Arc::new(FileStore::open(&cfg.data_dir).context("cannot open the request store")?),
            Arc::new(MemoryLeases::default()),
        ),
        // Migrations run here, safely while other nodes start too.
        StoreSpec::Postgres(url) => {
            let pg = PgStore::connect(url, &cfg.data_dir)
                .await
                .with_context(|| format!("cannot open the store {}", cfg.store.redacted()))?;
            let leases = PgLeases::new(pg.pool().clone());
            pool = Some(pg.pool().clone());
            (Arc::new(pg), Arc::new(leases))
        }
    };
    tracing::info!(store = %cfg.store.redacted(), "opened the request store");
    let algorithms = cfg.algorithms()?;
    let host_keys = load_or_generate_host_keys(&cfg.host_key_dir, &cfg.host_key_types)?;
    let published: Vec<PublishedHostKey> = host_keys
        .iter()
        .map(|k| {
            let algorithm = k.key.algorithm();
            let fp = fingerprint(k.key.public_key());
            // Operators publish these to customers; a type added to an older key dir is
            // logged as generated, once.
            if k.generated {
                tracing::info!(r#type = %k.kind, algorithm = %algorithm, fingerprint = %fp, dir = %cfg.host_key_dir.display(), "generated a new host key");
            } else {
                tracing::info!(r#type = %k.kind, algorithm = %algorithm, fingerprint = %fp, "loaded the host key");
            }
            PublishedHostKey {
                r#type: k.kind.name().to_string(),
                algorithm: algorithm.to_string(),
                fingerprint: fp,
                // A key the set has no algorithm for (an ECDSA key under `hardened`) is
                // kept, so that switching back does not change it, but not offered.
                offered_as: algorithms
                    .host_key
                    .iter()
                    .filter(|a| k.kind.serves(a))
                    .map(|a| a.to_string())
                    .collect(),
            }
        })
        .collect();
    tracing::info!(set = algorithms.set.name(), overridden = algorithms.overridden, algorithms = %algorithms.describe(), "SSH algorithms");
    let presented: Vec<HostKey> = published
        .iter()
        .map(|k| HostKey {
            algorithm: k.algorithm.clone(),
            fingerprint: k.fingerprint.clone(),
        })
        .collect();
    store
        .check_host_keys(&cfg.node_name, &presented)
        .await
        .context("refusing to start")?;
    let token = admin_token(&cfg.admin_token_file)?;

    anyhow::ensure!(
        cfg.admin_listen.ip().is_loopback() || cfg.admin_allow_remote,
        "the operator API would listen on {}, which is not a loopback address: pass --admin-allow-remote if that is intended",
        cfg.admin_listen
    );
    let ssh_listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let admin_listener = TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.admin_listen))?;
    let ssh_addr = ssh_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    // The roots an https:// hook is verified against, read once (config.validate checked
    // the URL's scheme).
    if cfg.on_upload_closed.is_some() || cfg.hook_ca.is_some() {
        let roots = crate::http::init_tls(cfg.hook_ca.as_deref())?;
        tracing::info!(
            system = roots.system,
            hook_ca = roots.extra,
            "roots for https:// hooks"
        );
    }
    // Read before the listener serves, so a bad file stops the start with its name; the
    // SIGHUP handler is in place before anyone is told the gateway is up (SIGHUP's
    // default would end the process).
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = Arc::new(admin::Tls::load(admin::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })?);
            tracing::info!(cert = %cert.display(), fingerprint = %tls.fingerprint(), "the operator API serves HTTPS");
            Some(tls)
        }
        _ => None,
    };
    let hangups = match &tls {
        Some(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot wait for SIGHUP")?,
        ),
        None => None,
    };
    // Without a hook nothing is stored: nobody would take the events.
    let delivery = match &cfg.on_upload_closed {
        None => None,
        Some(url) => {
            let limits = OutboxLimits {
                events: cfg.outbox_max_events,
                per_request: cfg.outbox_max_events_per_request,
            };
            let outbox: Arc<dyn Outbox> = match &pool {
                Some(pool) => Arc::new(PgOutbox::new(pool.clone(), limits)),
                None => Arc::new(
                    FileOutbox::open(&cfg.data_dir, limits)
                        .context("cannot open the event outbox")?,
                ),
            };
            let settings = HookSettings {
                url: url.clone(),
                secret: cfg.hook_key()?.map(|s| s.0.into_bytes()),
                node: cfg.node_name.clone(),
                timeout: cfg.hook_timeout,
                backoff_max: cfg.hook_backoff_max,
                concurrency: cfg.hook_concurrency,
            };
            if settings.secret.is_none() {
                tracing::warn!(
                    "the hook's events are not signed: set --hook-secret or --hook-secret-file"
                );
            }
            Some((Events::new(outbox), settings))
        }
    };
    let leases = Leases::start(
        lease_store,
        LeaseSettings {
            node: cfg.node_name.clone(),
            ttl: cfg.lease_ttl,
            wait: cfg.lease_wait,
        },
    );
    let dumps = open_dumps(&cfg, store.clone())?;
    let gateway = Gateway::new(
        store,
        delivery.as_ref().map(|(events, _)| events.clone()),
        leases,
        dumps,
        cfg.max_upload_size,
        cfg.max_sessions_per_request,
    );
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let server_info = ServerInfo {
        node: cfg.node_name.clone(),
        algorithm_set: algorithms.set.name().to_string(),
        algorithms_overridden: algorithms.overridden,
        host_keys: published,
    };
    let settings = SshSettings {
        host_keys: host_keys.into_iter().map(|k| k.key).collect(),
        algorithms,
        max_connections: cfg.max_connections,
        sources: SourcePolicy {
            max_unauthenticated: cfg.max_startups_per_source,
            max_connections: cfg.max_connections_per_source,
            rate: cfg.connection_rate_per_source,
        },
        login_grace: cfg.login_grace,
        idle_timeout: cfg.idle_timeout,
        penalties: PenaltyPolicy {
            max_failures: cfg.penalty_failures,
            window: Duration::from_secs(60),
            penalty: cfg.penalty,
        },
        proxy: cfg.proxy_protocol.then(|| ProxyPolicy {
            from: cfg.proxy_from.clone(),
        }),
        node: cfg.node_name.clone(),
    };
    let ssh = SshServer::new(gateway.clone(), &settings).context("cannot start the SSH threads")?;
    tracker.spawn(ssh.serve(ssh_listener, shutdown.clone(), tracker.clone()));
    tracker.spawn(gateway.clone().run_sweeper(shutdown.clone()));
    if let Dumps::S3(s3) = gateway.dumps() {
        tracker.spawn(sweep_uploads(
            s3.clone(),
            cfg.s3_sweep_every,
            shutdown.clone(),
        ));
    }
    if let Some((events, settings)) = delivery {
        tracker.spawn(
            events
                .clone()
                .run_expiries(gateway.clone(), shutdown.clone()),
        );
        tracker.spawn(hook::run(events, settings, shutdown.clone()));
    }
    tracker.spawn(
        gateway
            .clone()
            .run_session_exchange(cfg.node_name.clone(), shutdown.clone()),
    );

    let state = Arc::new(AdminState {
        gateway,
        node: cfg.node_name.clone(),
        token,
        public_host: cfg.public_host.clone(),
        public_port: cfg.public_port.unwrap_or(ssh_addr.port()),
        access_ttl: time::Duration::try_from(cfg.access_ttl).unwrap_or(time::Duration::DAY),
        throttle: Default::default(),
        data_dir: cfg.data_dir.clone(),
        samples: Default::default(),
        sessions: admin::Sessions::new(cfg.page_session_ttl),
        logins: Default::default(),
        page_https: cfg.page_https || tls.is_some(),
        throttled_log: Default::default(),
        server_info,
        shutdown: shutdown.clone(),
    });
    let app = admin::router(state);
    let limits = admin::HttpLimits {
        max_connections: cfg.http_max_connections,
        header_timeout: cfg.http_header_timeout,
        body_timeout: cfg.http_body_timeout,
    };
    if let (Some(tls), Some(hangups)) = (&tls, hangups) {
        tracker.spawn(admin::reload_on_hangup(
            tls.clone(),
            hangups,
            shutdown.clone(),
        ));
    }
    tracker.spawn(admin::serve(
        admin_listener,
        app,
        limits,
        tls.clone(),
        shutdown.clone(),
        tracker.clone(),
    ));
    let proxy_from: Vec<String> = cfg.proxy_from.iter().map(|n| n.to_string()).collect();
    tracing::info!(
        node = %cfg.node_name,
        ssh = %ssh_addr,
        admin = %admin_addr,
        https = tls.is_some(),
        proxy_protocol = cfg.proxy_protocol,
        proxy_from = %proxy_from.join(","),
        "listening"
    );
    Ok(Running {
        ssh: ssh_addr,
        admin: admin_addr,
        shutdown,
        tracker,
    })
}
