//! Gateway settings: embedded defaults, an optional TOML file, then command-line flags
//! (flags win). Unknown keys in the file are rejected with the key named.
//!
//! This file holds [`Settings`], every setting as the TOML file and the `serve` flags both
//! give them, and how a file and flags combine. Beside it in `config/`: `parse.rs`, the
//! parsers of the values (durations, networks, store and storage URLs, secrets);
//! `resolve.rs`, the embedded defaults filled in ([`Config`]); `validate.rs`, the
//! settings that cannot work together, refused before anything starts, and what is
//! derived from several of them (the hook's key, the SSH algorithms).

mod parse;
mod resolve;
#[cfg(test)]
mod tests;
mod validate;

use parse::{duration_opt, list_opt, nets_opt, part_size_opt, secret_opt, storage_opt, store_opt};
pub use parse::{
    parse_duration, parse_net, parse_part_size, parse_secret, parse_storage, parse_store,
    LogFormat, Secret, StorageSpec, StoreSpec, MAX_DURATION,
};
pub use resolve::Config;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::keys::HostKeyType;
use crate::ssh::AlgorithmSet;

/// Every setting, each optional, as the TOML file and the `serve` flags both give them.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// SSH listen address [default: 0.0.0.0:2200]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Operator HTTP API listen address [default: 127.0.0.1:2280]
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Where request records and files live [default: ./data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the SSH host keys live [default: ./keys]
    #[arg(long, value_name = "DIR")]
    pub host_key_dir: Option<PathBuf>,
    /// Host name that responses tell clients to connect to [default: the machine's host name]
    #[arg(long, value_name = "NAME")]
    pub public_host: Option<String>,
    /// Port that responses tell clients to connect to [default: the SSH listen port]
    #[arg(long, value_name = "N")]
    pub public_port: Option<u16>,
    /// Operator token file [default: DATA_DIR/admin.token]
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Most concurrent SSH connections [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections from one address (IPv6: one /64) that have not logged in yet [default: 10]
    #[arg(long, value_name = "N")]
    pub max_startups_per_source: Option<u32>,
    /// All connections from one address (IPv6: one /64) [default: half of --max-connections]
    #[arg(long, value_name = "N")]
    pub max_connections_per_source: Option<u32>,
    /// New connections per second from one address, in bursts of twice that; 0 disables [default: 10]
    #[arg(long, value_name = "N")]
    pub connection_rate_per_source: Option<u32>,
    /// Live SSH sessions of one request [default: 10]
    #[arg(long, value_name = "N")]
    pub max_sessions_per_request: Option<usize>,
    /// Seconds a connection may take to authenticate [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub login_grace_secs: Option<u64>,
    /// Seconds without any traffic before a session is closed [default: 600]
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout_secs: Option<u64>,
    /// How long request_sftp_access opens access for, e.g. 24h, 90m, 30s [default: 24h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_opt")]
    pub access_ttl: Option<Duration>,
    /// URL that receives each event (an upload's write handle closed, access expired) as
    /// a signed JSON POST, from the durable outbox, until it answers 2xx
    #[arg(long, value_name = "URL")]
    pub on_upload_closed: Option<String>,
    /// CA certificate file (PEM) trusted for an https:// hook besides the system's roots
    #[arg(long, value_name = "FILE", env = "SFTPGATE_HOOK_CA")]
    pub hook_ca: Option<PathBuf>,
    /// Serve the operator HTTP listener over HTTPS with this PEM certificate chain (leaf
    /// first), reloaded on SIGHUP; needs --tls-key
    #[arg(long, value_name = "FILE", env = "SFTPGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 RSA or SEC1 EC)
    #[arg(long, value_name = "FILE", env = "SFTPGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The key the hook's POSTs are signed with (HMAC-SHA256); never logged
    // The environment's value is not shown in --help.
    #[arg(long, value_name = "SECRET", env = "SFTPGATE_HOOK_SECRET", hide_env_values = true, value_parser = parse_secret)]
    #[serde(default, deserialize_with = "secret_opt")]
    pub hook_secret: Option<Secret>,
    /// A file holding the hook's signing key (its one line; surrounding whitespace is cut)
    #[arg(long, value_name = "FILE")]
    pub hook_secret_file: Option<PathBuf>,
    /// How long one POST to the hook may take to be answered [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_opt")]
    pub hook_timeout: Option<Duration>,
    /// The longest wait between a request's retries (they double from 1s) [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_opt")]
    pub hook_backoff_max: Option<Duration>,
    /// Requests whose events are delivered at once [default: 16]
    #[arg(long, value_name = "N")]
    pub hook_concurrency: Option<usize>,
    /// Most events waiting in the outbox; past it an upload's CLOSE is answered with a
    /// failure [default: 100000]
    #[arg(long, value_name = "N")]
    pub outbox_max_events: Option<u64>,
    /// Most events of one request waiting in the outbox [default: 10000]
    #[arg(long, value_name = "N")]
    pub outbox_max_events_per_request: Option<u64>,
    /// Largest upload accepted per request, in bytes [default: no limit]
    #[arg(long, value_name = "BYTES")]
    pub max_upload_size: Option<u64>,
    /// Failed connections from one address within a minute before it is refused; 0 disables [default: 100]
    #[arg(long, value_name = "N")]
    pub penalty_failures: Option<u32>,
    /// How long a penalized address is refused, in seconds [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub penalty_secs: Option<u64>,
    /// Most concurrent connections to the operator HTTP listener; one more is answered 503
    /// and closed [default: 256]
    #[arg(long, value_name = "N")]
    pub http_max_connections: Option<usize>,
    /// Seconds an HTTP connection may take to send a whole request head, counted from when
    /// the server starts waiting for it (so it also bounds an idle keep-alive connection)
    /// [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub http_header_timeout_secs: Option<u64>,
    /// Seconds a request body may send nothing while the server waits for it, and a client
    /// may take nothing of a response it is sent [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub http_body_timeout_secs: Option<u64>,
    /// How long a status page login lasts, e.g. 12h, 30m [default: 12h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_opt")]
    pub page_session_ttl: Option<Duration>,
    /// The status page is reached over https (a TLS proxy in front): its cookie is Secure
    #[arg(long)]
    #[serde(default)]
    pub page_https: bool,
    /// Allow the operator API to listen on a non-loopback address
    #[arg(long)]
    #[serde(default)]
    pub admin_allow_remote: bool,
    /// How long an upload's lease lasts without renewal (renewed every fifth of it): a
    /// node that dies frees its uploads for other nodes within this [default: 15s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_opt")]
    pub lease_ttl: Option<Duration>,
    /// How long a session waits for an upload's lease another node holds before its write
    /// open is refused [default: 20s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_opt")]
    pub lease_wait: Option<Duration>,
    /// Log format on stderr [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// SSH connections from --proxy-from sources start with a PROXY protocol v1 or v2
    /// header (HAProxy's send-proxy-v2) naming the real client
    #[arg(long)]
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The load balancers' addresses (CIDR or single addresses, comma-separated): their
    /// connections must start with a PROXY header; those of every other source must not
    #[arg(long, value_name = "CIDR[,CIDR...]", value_delimiter = ',', value_parser = parse_net)]
    #[serde(default, deserialize_with = "nets_opt")]
    pub proxy_from: Option<Vec<IpNet>>,
    /// This node's name in the logs [default: the machine's host name]
    #[arg(long, value_name = "NAME", env = "SFTPGATE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Where request records live: `file` (DATA_DIR/requests) or a shared PostgreSQL
    /// database, `postgres://user@host:port/db`; files stay in DATA_DIR [default: file]
    // The environment's value is not shown in --help: the URL may hold a password.
    #[arg(long, value_name = "URL", env = "SFTPGATE_STORE", hide_env_values = true, value_parser = parse_store)]
    #[serde(default, deserialize_with = "store_opt")]
    pub store: Option<StoreSpec>,
    /// Where dumps live: `file` (DATA_DIR/requests) or an S3-compatible bucket,
    /// `s3://bucket/prefix`, with credentials and region the usual AWS ways (README,
    /// Storage) [default: file]
    #[arg(long, value_name = "URL", value_parser = parse_storage)]
    #[serde(default, deserialize_with = "storage_opt")]
    pub storage: Option<StorageSpec>,
    /// The S3 endpoint of an S3-compatible server, e.g. http://127.0.0.1:9000 [default:
    /// AWS_ENDPOINT_URL, else AWS's]
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// The bucket's region [default: AWS_REGION or AWS_DEFAULT_REGION, else us-east-1]
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// The size of an upload's parts on S3, in bytes, 5 MiB to 5 GiB: 10,000 parts make
    /// the largest upload [default: 16777216, 16 MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_part_size)]
    #[serde(default, deserialize_with = "part_size_opt")]
    pub s3_part_size: Option<u64>,
    /// How often abandoned multipart uploads are looked for and aborted (README, Storage)
    /// [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_opt")]
    pub s3_sweep_every: Option<Duration>,
    /// Host-key types to generate (once) and offer, comma-separated [default: ed25519,ecdsa,rsa]
    #[arg(long, value_name = "TYPE[,TYPE...]", value_delimiter = ',')]
    #[serde(default, deserialize_with = "list_opt")]
    pub host_key_types: Option<Vec<HostKeyType>>,
    /// SSH algorithm set, each list in the README [default: compatible]
    #[arg(long, value_name = "SET")]
    pub algorithms: Option<AlgorithmSet>,
    /// Key exchanges offered, in order, in place of the set's (comma-separated)
    #[arg(long, value_name = "NAME[,NAME...]", value_delimiter = ',')]
    #[serde(default, deserialize_with = "list_opt")]
    pub kex_algorithms: Option<Vec<String>>,
    /// Host-key and signature algorithms, in place of the set's; `ssh-rsa` (SHA-1) only
    /// when named here (comma-separated)
    #[arg(long, value_name = "NAME[,NAME...]", value_delimiter = ',')]
    #[serde(default, deserialize_with = "list_opt")]
    pub host_key_algorithms: Option<Vec<String>>,
    /// Ciphers offered, in place of the set's (comma-separated)
    #[arg(long, value_name = "NAME[,NAME...]", value_delimiter = ',')]
    #[serde(default, deserialize_with = "list_opt")]
    pub ciphers: Option<Vec<String>>,
    /// MACs offered, in place of the set's (comma-separated)
    #[arg(long, value_name = "NAME[,NAME...]", value_delimiter = ',')]
    #[serde(default, deserialize_with = "list_opt")]
    pub macs: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().to_string(),
        })
    }

    /// `self` wins over `base` wherever it has a value.
    pub fn over(self, base: Settings) -> Settings {
        Settings {
            listen: self.listen.or(base.listen),
            admin_listen: self.admin_listen.or(base.admin_listen),
            data_dir: self.data_dir.or(base.data_dir),
            host_key_dir: self.host_key_dir.or(base.host_key_dir),
            public_host: self.public_host.or(base.public_host),
            public_port: self.public_port.or(base.public_port),
            admin_token_file: self.admin_token_file.or(base.admin_token_file),
            max_connections: self.max_connections.or(base.max_connections),
            max_startups_per_source: self
                .max_startups_per_source
                .or(base.max_startups_per_source),
            max_connections_per_source: self
                .max_connections_per_source
                .or(base.max_connections_per_source),
            connection_rate_per_source: self
                .connection_rate_per_source
                .or(base.connection_rate_per_source),
            max_sessions_per_request: self
                .max_sessions_per_request
                .or(base.max_sessions_per_request),
            login_grace_secs: self.login_grace_secs.or(base.login_grace_secs),
            idle_timeout_secs: self.idle_timeout_secs.or(base.idle_timeout_secs),
            access_ttl: self.access_ttl.or(base.access_ttl),
            on_upload_closed: self.on_upload_closed.or(base.on_upload_closed),
            hook_ca: self.hook_ca.or(base.hook_ca),
            tls_cert: self.tls_cert.or(base.tls_cert),
            tls_key: self.tls_key.or(base.tls_key),
            hook_secret: self.hook_secret.or(base.hook_secret),
            hook_secret_file: self.hook_secret_file.or(base.hook_secret_file),
            hook_timeout: self.hook_timeout.or(base.hook_timeout),
            hook_backoff_max: self.hook_backoff_max.or(base.hook_backoff_max),
            hook_concurrency: self.hook_concurrency.or(base.hook_concurrency),
            outbox_max_events: self.outbox_max_events.or(base.outbox_max_events),
            outbox_max_events_per_request: self
                .outbox_max_events_per_request
                .or(base.outbox_max_events_per_request),
            max_upload_size: self.max_upload_size.or(base.max_upload_size),
            penalty_failures: self.penalty_failures.or(base.penalty_failures),
            penalty_secs: self.penalty_secs.or(base.penalty_secs),
            http_max_connections: self.http_max_connections.or(base.http_max_connections),
            http_header_timeout_secs: self
                .http_header_timeout_secs
                .or(base.http_header_timeout_secs),
            http_body_timeout_secs: self.http_body_timeout_secs.or(base.http_body_timeout_secs),
            page_session_ttl: self.page_session_ttl.or(base.page_session_ttl),
            page_https: self.page_https || base.page_https,
            admin_allow_remote: self.admin_allow_remote || base.admin_allow_remote,
            log_format: self.log_format.or(base.log_format),
            store: self.store.or(base.store),
            storage: self.storage.or(base.storage),
            s3_endpoint: self.s3_endpoint.or(base.s3_endpoint),
            s3_region: self.s3_region.or(base.s3_region),
            s3_part_size: self.s3_part_size.or(base.s3_part_size),
            s3_sweep_every: self.s3_sweep_every.or(base.s3_sweep_every),
            proxy_protocol: self.proxy_protocol || base.proxy_protocol,
            proxy_from: self.proxy_from.or(base.proxy_from),
            node_name: self.node_name.or(base.node_name),
            lease_ttl: self.lease_ttl.or(base.lease_ttl),
            lease_wait: self.lease_wait.or(base.lease_wait),
            host_key_types: self.host_key_types.or(base.host_key_types),
            algorithms: self.algorithms.or(base.algorithms),
            kex_algorithms: self.kex_algorithms.or(base.kex_algorithms),
            host_key_algorithms: self.host_key_algorithms.or(base.host_key_algorithms),
            ciphers: self.ciphers.or(base.ciphers),
            macs: self.macs.or(base.macs),
        }
    }
}
