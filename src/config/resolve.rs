//! The embedded defaults: [`Settings::resolve`] fills in every setting left out, giving
//! the [`Config`] the gateway runs with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::{LogFormat, Secret, Settings, StorageSpec, StoreSpec};
use crate::keys::HostKeyType;
use crate::ssh::{AlgorithmOverrides, AlgorithmSet};

impl Settings {
    /// Fills in the embedded defaults.
    pub fn resolve(self) -> Config {
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from("data"));
        let max_connections = self.max_connections.unwrap_or(1024).max(1);
        Config {
            listen: self.listen.unwrap_or_else(|| ([0, 0, 0, 0], 2200).into()),
            admin_listen: self
                .admin_listen
                .unwrap_or_else(|| ([127, 0, 0, 1], 2280).into()),
            admin_token_file: self
                .admin_token_file
                .unwrap_or_else(|| data_dir.join("admin.token")),
            data_dir,
            host_key_dir: self.host_key_dir.unwrap_or_else(|| PathBuf::from("keys")),
            public_host: self.public_host.unwrap_or_else(machine_hostname),
            public_port: self.public_port,
            max_connections,
            // Half of the global cap by default: one address can never fill it alone.
            max_startups_per_source: self.max_startups_per_source.unwrap_or(10).max(1),
            max_connections_per_source: self
                .max_connections_per_source
                .unwrap_or((max_connections / 2).max(1) as u32)
                .max(1),
            connection_rate_per_source: self.connection_rate_per_source.unwrap_or(10),
            max_sessions_per_request: self.max_sessions_per_request.unwrap_or(10).max(1),
            login_grace: Duration::from_secs(self.login_grace_secs.unwrap_or(30).max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.unwrap_or(600).max(1)),
            access_ttl: self.access_ttl.unwrap_or(Duration::from_secs(24 * 3600)),
            on_upload_closed: self.on_upload_closed,
            hook_ca: self.hook_ca,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            hook_secret: self.hook_secret,
            hook_secret_file: self.hook_secret_file,
            hook_timeout: self.hook_timeout.unwrap_or(Duration::from_secs(10)),
            hook_backoff_max: self.hook_backoff_max.unwrap_or(Duration::from_secs(300)),
            hook_concurrency: self.hook_concurrency.unwrap_or(16).max(1),
            outbox_max_events: self.outbox_max_events.unwrap_or(100_000).max(1),
            outbox_max_events_per_request: self
                .outbox_max_events_per_request
                .unwrap_or(10_000)
                .max(1),
            max_upload_size: self.max_upload_size,
            penalty_failures: self.penalty_failures.unwrap_or(100),
            penalty: Duration::from_secs(self.penalty_secs.unwrap_or(60)),
            http_max_connections: self.http_max_connections.unwrap_or(256).max(1),
            http_header_timeout: Duration::from_secs(
                self.http_header_timeout_secs.unwrap_or(10).max(1),
            ),
            http_body_timeout: Duration::from_secs(
                self.http_body_timeout_secs.unwrap_or(30).max(1),
            ),
            page_session_ttl: self
                .page_session_ttl
                .unwrap_or(Duration::from_secs(12 * 3600)),
            page_https: self.page_https,
            admin_allow_remote: self.admin_allow_remote,
            log_json: self.log_format == Some(LogFormat::Json),
            store: self.store.unwrap_or(StoreSpec::File),
            storage: self.storage.unwrap_or(StorageSpec::File),
            s3_endpoint: self.s3_endpoint,
            s3_region: self.s3_region,
            s3_part_size: self.s3_part_size.unwrap_or(16 << 20),
            s3_sweep_every: self.s3_sweep_every.unwrap_or(Duration::from_secs(300)),
            proxy_protocol: self.proxy_protocol,
            proxy_from: self.proxy_from.unwrap_or_default(),
            node_name: self
                .node_name
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(machine_hostname),
            lease_ttl: self.lease_ttl.unwrap_or(Duration::from_secs(15)),
            // Longer than the TTL: a write open outwaits a dead node's lease.
            lease_wait: self.lease_wait.unwrap_or(Duration::from_secs(20)),
            host_key_types: {
                // In the order given, each once.
                let mut types = Vec::new();
                for t in self.host_key_types.unwrap_or(HostKeyType::ALL.to_vec()) {
                    if !types.contains(&t) {
                        types.push(t);
                    }
                }
                types
            },
            algorithm_set: self.algorithms.unwrap_or_default(),
            algorithm_overrides: AlgorithmOverrides {
                kex: self.kex_algorithms,
                host_key: self.host_key_algorithms,
                cipher: self.ciphers,
                mac: self.macs,
            },
        }
    }
}

/// Settings with every default applied.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub host_key_dir: PathBuf,
    pub public_host: String,
    /// `None`: the port the SSH listener actually bound.
    pub public_port: Option<u16>,
    pub admin_token_file: PathBuf,
    pub max_connections: usize,
    pub max_startups_per_source: u32,
    pub max_connections_per_source: u32,
    pub connection_rate_per_source: u32,
    pub max_sessions_per_request: usize,
    pub login_grace: Duration,
    pub idle_timeout: Duration,
    pub access_ttl: Duration,
    pub on_upload_closed: Option<String>,
    /// A CA (PEM) an https:// hook's certificate may chain to, besides the system's roots.
    pub hook_ca: Option<PathBuf>,
    /// The listener's certificate chain and key (both or neither: see `validate`).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub hook_secret: Option<Secret>,
    pub hook_secret_file: Option<PathBuf>,
    pub hook_timeout: Duration,
    pub hook_backoff_max: Duration,
    pub hook_concurrency: usize,
    pub outbox_max_events: u64,
    pub outbox_max_events_per_request: u64,
    pub max_upload_size: Option<u64>,
    pub penalty_failures: u32,
    pub penalty: Duration,
    pub http_max_connections: usize,
    pub http_header_timeout: Duration,
    pub http_body_timeout: Duration,
    pub page_session_ttl: Duration,
    pub page_https: bool,
    pub admin_allow_remote: bool,
    pub log_json: bool,
    pub lease_ttl: Duration,
    pub lease_wait: Duration,
    /// Where records live: the embedded file store or a PostgreSQL database.
    pub store: StoreSpec,
    /// Where dumps live: files in DATA_DIR or an S3-compatible bucket.
    pub storage: StorageSpec,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_part_size: u64,
    pub s3_sweep_every: Duration,
    pub proxy_protocol: bool,
    /// Sources whose connections start with a PROXY header (only with `proxy_protocol`).
    pub proxy_from: Vec<IpNet>,
    pub node_name: String,
    /// At least one, each once.
    pub host_key_types: Vec<HostKeyType>,
    pub algorithm_set: AlgorithmSet,
    pub algorithm_overrides: AlgorithmOverrides,
}

pub(super) fn machine_hostname() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}
