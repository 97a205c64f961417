//! Gateway settings: embedded defaults, an optional TOML file, then command-line flags
//! (flags win). Unknown keys in the file are rejected with the key named.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::keys::HostKeyType;
use crate::ssh::{AlgorithmOverrides, AlgorithmSet, Algorithms};

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

/// A secret setting: its `Debug` never shows it (settings are printed with `{:?}`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

pub fn parse_secret(s: &str) -> Result<Secret, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the hook secret is empty".into());
    }
    Ok(Secret(s.to_string()))
}

fn secret_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    let s = String::deserialize(d)?;
    parse_secret(&s).map(Some).map_err(serde::de::Error::custom)
}

/// Which store holds the records.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// The embedded file store.
    File,
    /// A PostgreSQL database several nodes share, by URL.
    Postgres(String),
}

impl StoreSpec {
    /// For logs and errors: the URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            StoreSpec::File => "file".into(),
            StoreSpec::Postgres(url) => redact_password(url),
        }
    }
}

// Config is printed with {:?} in places; a URL's password must never be.
impl std::fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `scheme://user:password@host/...` with the password replaced.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.into();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.into(),
    }
}

/// `file`, or a `postgres://` / `postgresql://` URL.
pub fn parse_store(s: &str) -> Result<StoreSpec, String> {
    let s = s.trim();
    if s == "file" {
        Ok(StoreSpec::File)
    } else if crate::store::postgres::is_postgres_url(s) {
        Ok(StoreSpec::Postgres(s.to_string()))
    } else {
        Err(format!(
            "\"{}\" is not a store: use file or postgres://user@host:port/db",
            redact_password(s)
        ))
    }
}

fn store_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<StoreSpec>, D::Error> {
    let s = String::deserialize(d)?;
    parse_store(&s).map(Some).map_err(serde::de::Error::custom)
}

/// Where dumps live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageSpec {
    /// Files under DATA_DIR/requests.
    File,
    /// An S3-compatible bucket, by `s3://bucket/prefix` URL.
    S3(String),
}

/// `file`, or `s3://bucket` with an optional `/prefix`.
pub fn parse_storage(s: &str) -> Result<StorageSpec, String> {
    let s = s.trim();
    if s == "file" {
        return Ok(StorageSpec::File);
    }
    match s.strip_prefix("s3://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {
            Ok(StorageSpec::S3(s.to_string()))
        }
        _ => Err(format!(
            "\"{s}\" is not a storage: use file or s3://bucket/prefix"
        )),
    }
}

fn storage_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<StorageSpec>, D::Error> {
    let s = String::deserialize(d)?;
    parse_storage(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// S3's bounds on a part: at least 5 MiB (but the last), at most 5 GiB.
pub fn parse_part_size(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("\"{s}\" is not a number of bytes"))?;
    if !(5 << 20..=5 << 30).contains(&n) {
        return Err(format!(
            "a part size of {n} bytes is outside S3's bounds of 5 MiB (5242880) to 5 GiB"
        ));
    }
    Ok(n)
}

fn part_size_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n = u64::deserialize(d)?;
    parse_part_size(&n.to_string())
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The longest duration a setting takes. Every duration is added to the clock somewhere
/// (an expiry, a deadline), and a sum past what `Instant` or `OffsetDateTime` can hold
/// would panic; a century (of humantime's 365.25-day years) is far past any real setting
/// and far inside both.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// `90` (seconds), or humantime's format: `90s`, `15m`, `24h`, `2d`, `1h 30m`. Zero and
/// anything over [`MAX_DURATION`] are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    // A bare number is seconds, as it always was here; humantime wants a unit.
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("\"{s}\" is too long (at most 100 years)"))?
    } else {
        humantime::parse_duration(s).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => {
                format!("\"{s}\" is too long (at most 100 years)")
            }
            e => format!("\"{s}\" is not a duration like 90s, 15m, 24h ({e})"),
        })?
    };
    if d.is_zero() {
        return Err("a duration must be positive".into());
    }
    if d > MAX_DURATION {
        return Err(format!("\"{s}\" is too long (at most 100 years)"));
    }
    Ok(d)
}

/// `10.0.0.0/8`, `2001:db8::/32`, or one address (`10.0.0.5`, a /32 or /128).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("\"{s}\" is not a CIDR block like 10.0.0.0/8 or an IP address"))
}

/// `proxy-from = "10.0.0.0/8,10.1.0.5"` or `proxy-from = ["10.0.0.0/8", "10.1.0.5"]`.
fn nets_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    comma_items(d)?
        .iter()
        .map(|s| parse_net(s))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A list given as a TOML array of strings or as one string, each item split at commas
/// like the flags' values, trimmed, empty ones dropped.
fn comma_items<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    Ok(items
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// `comma_items`, each item read as a `T` (a string, or an enum by its name).
fn list_opt<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    comma_items(d)?
        .iter()
        .map(|s| T::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(s)))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn duration_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
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

impl Config {
    /// Settings that cannot work together, named before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.proxy_protocol && self.proxy_from.is_empty() {
            // No default: a header believed from anyone would let any client claim any
            // address, and "loopback only" would silently fit no real balancer.
            return Err(ConfigError::Invalid(
                "--proxy-protocol needs --proxy-from CIDR[,CIDR...]: the load balancers' addresses, the only sources whose PROXY headers are believed".into(),
            ));
        }
        if !self.proxy_protocol && !self.proxy_from.is_empty() {
            return Err(ConfigError::Invalid(
                "--proxy-from is set but --proxy-protocol is not: pass --proxy-protocol to read PROXY headers from those sources".into(),
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "--tls-cert needs --tls-key: the certificate's private key (PEM)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "--tls-key needs --tls-cert: the certificate chain (PEM) it is the key of"
                        .into(),
                ))
            }
            _ => {}
        }
        if let Some(url) = &self.on_upload_closed {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "--on-upload-closed {url}: only http:// and https:// URLs are supported"
                )));
            }
        }
        if self.hook_secret.is_some() && self.hook_secret_file.is_some() {
            return Err(ConfigError::Invalid(
                "--hook-secret and --hook-secret-file are both set: give the hook's key one way"
                    .into(),
            ));
        }
        if self.on_upload_closed.is_none()
            && (self.hook_secret.is_some() || self.hook_secret_file.is_some())
        {
            return Err(ConfigError::Invalid(
                "a hook secret is set but no hook: add --on-upload-closed URL".into(),
            ));
        }
        if self.host_key_types.is_empty() {
            return Err(ConfigError::Invalid(
                "--host-key-types is empty: name at least one of ed25519, ecdsa, rsa".into(),
            ));
        }
        self.algorithms()?;
        if self.node_name.chars().any(char::is_control) {
            return Err(ConfigError::Invalid(
                "--node-name may not contain control characters".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The hook's signing key, read from `--hook-secret-file` if that is how it is given.
    pub fn hook_key(&self) -> Result<Option<Secret>, ConfigError> {
        let Some(path) = &self.hook_secret_file else {
            return Ok(self.hook_secret.clone());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        parse_secret(&text)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
    }

    /// The algorithm set with the config file's lists in place; refuses unknown names, and
    /// a host-key list that no configured host-key type can serve.
    pub fn algorithms(&self) -> Result<Algorithms, ConfigError> {
        let algorithms = Algorithms::resolve(self.algorithm_set, &self.algorithm_overrides)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let served = |a: &russh::keys::Algorithm| self.host_key_types.iter().any(|t| t.serves(a));
        if !algorithms.host_key.iter().any(served) {
            let types: Vec<&str> = self.host_key_types.iter().map(|t| t.name()).collect();
            return Err(ConfigError::Invalid(format!(
                "no host key can be offered: --host-key-types {} has none for the {} set's host-key algorithms ({})",
                types.join(","),
                self.algorithm_set.name(),
                algorithms
                    .host_key
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(algorithms)
    }
}

fn machine_hostname() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_over_defaults() {
        let file: Settings =
            toml::from_str("listen = \"127.0.0.1:1\"\npublic-host = \"f\"\n").unwrap();
        let flags = Settings {
            public_host: Some("flag".into()),
            ..Settings::default()
        };
        let cfg = flags.over(file).resolve();
        assert_eq!(cfg.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(cfg.public_host, "flag");
        assert_eq!(cfg.admin_listen, "127.0.0.1:2280".parse().unwrap());
        assert_eq!(cfg.admin_token_file, PathBuf::from("data/admin.token"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("").is_err());
        // Absurd values are refused with a reason, never wrapped or left to panic later
        // when added to the clock (the hand-written parser's `n * 86400` could overflow).
        for absurd in [
            "99999999999999999999d",
            "213503982334601d",
            "18446744073709551615",
            "101y",
        ] {
            assert_eq!(
                parse_duration(absurd),
                Err(format!("\"{absurd}\" is too long (at most 100 years)")),
                "{absurd}"
            );
        }
        assert_eq!(parse_duration("100y").map(|d| d <= MAX_DURATION), Ok(true));
        let s: Settings = toml::from_str("access-ttl = \"2h\"").unwrap();
        assert_eq!(s.access_ttl, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn lease_durations() {
        let cfg = Settings::default().resolve();
        assert_eq!(
            (cfg.lease_ttl, cfg.lease_wait),
            (Duration::from_secs(15), Duration::from_secs(20))
        );
        let s: Settings = toml::from_str("lease-ttl = \"30s\"\nlease-wait = \"1m\"").unwrap();
        let cfg = s.resolve();
        assert_eq!(
            (cfg.lease_ttl, cfg.lease_wait),
            (Duration::from_secs(30), Duration::from_secs(60))
        );
    }

    #[test]
    fn log_formats() {
        let s: Settings = toml::from_str("log-format = \"json\"").unwrap();
        assert!(s.resolve().log_json);
        let err = toml::from_str::<Settings>("log-format = \"xml\"").unwrap_err();
        assert!(err.message().contains("xml"), "{}", err.message());
    }

    #[test]
    fn storages() {
        assert_eq!(Settings::default().resolve().storage, StorageSpec::File);
        assert_eq!(Settings::default().resolve().s3_part_size, 16 << 20);
        let s: Settings =
            toml::from_str("storage = \"s3://dumps/gw\"\ns3-part-size = 8388608").unwrap();
        let cfg = s.resolve();
        assert_eq!(cfg.storage, StorageSpec::S3("s3://dumps/gw".into()));
        assert_eq!(cfg.s3_part_size, 8 << 20);
        assert_eq!(parse_storage("file"), Ok(StorageSpec::File));
        for bad in ["s3://", "s3:///x", "gs://b", "/data"] {
            let err = parse_storage(bad).unwrap_err();
            assert!(err.contains("is not a storage"), "{err}");
        }
        let err = toml::from_str::<Settings>("s3-part-size = 1000").unwrap_err();
        assert!(
            err.message().contains("outside S3's bounds"),
            "{}",
            err.message()
        );
        assert!(parse_part_size(&(6u64 << 30).to_string()).is_err());
    }

    #[test]
    fn stores() {
        assert_eq!(Settings::default().resolve().store, StoreSpec::File);
        let s: Settings = toml::from_str("store = \"postgresql://gw@db:5432/sftpgate\"").unwrap();
        assert_eq!(
            s.resolve().store,
            StoreSpec::Postgres("postgresql://gw@db:5432/sftpgate".into())
        );
        assert_eq!(parse_store("file"), Ok(StoreSpec::File));
        let err = toml::from_str::<Settings>("store = \"mysql://u:pw@h/db\"").unwrap_err();
        assert!(err.message().contains("not a store"), "{}", err.message());
        assert!(!err.message().contains("pw"), "{}", err.message());
        let spec = parse_store("postgres://gw:s3cret@db:5432/x?sslmode=require").unwrap();
        assert_eq!(
            format!("{spec:?}"),
            "postgres://gw:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact_password("postgres://gw@db/x"), "postgres://gw@db/x");
        assert_eq!(
            redact_password("postgres://db/x?u=a@b"),
            "postgres://db/x?u=a@b"
        );
    }

    #[test]
    fn proxy_settings() {
        let s: Settings =
            toml::from_str("proxy-protocol = true\nproxy-from = \"10.0.0.0/8, 192.0.2.5\"\n")
                .unwrap();
        let cfg = s.resolve();
        assert_eq!(
            cfg.proxy_from,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.0.2.5/32".parse().unwrap()
            ]
        );
        assert!(cfg.validate().is_ok());
        let s: Settings =
            toml::from_str("proxy-protocol = true\nproxy-from = [\"::1\", \"10.1.0.0/16\"]")
                .unwrap();
        assert_eq!(s.resolve().proxy_from.len(), 2);
        let err = toml::from_str::<Settings>("proxy-from = \"10.0.0.0/33\"").unwrap_err();
        assert!(err.message().contains("10.0.0.0/33"), "{}", err.message());
        // Each without the other is refused with a message naming the missing flag.
        let on: Settings = toml::from_str("proxy-protocol = true").unwrap();
        let err = on.resolve().validate().unwrap_err().to_string();
        assert!(err.contains("--proxy-from"), "{err}");
        let from: Settings = toml::from_str("proxy-from = \"10.0.0.1\"").unwrap();
        let err = from.resolve().validate().unwrap_err().to_string();
        assert!(err.contains("--proxy-protocol"), "{err}");
        assert!(Settings::default().resolve().validate().is_ok());
    }

    #[test]
    fn node_name_defaults_to_the_host_name() {
        assert_eq!(Settings::default().resolve().node_name, machine_hostname());
        let s: Settings = toml::from_str("node-name = \"gw-2\"").unwrap();
        assert_eq!(s.resolve().node_name, "gw-2");
    }

    #[test]
    fn host_key_types_and_algorithm_sets() {
        let cfg = Settings::default().resolve();
        assert_eq!(cfg.host_key_types, HostKeyType::ALL);
        assert_eq!(cfg.algorithm_set, AlgorithmSet::Compatible);
        assert!(cfg.validate().is_ok());
        let s: Settings = toml::from_str(
            "host-key-types = \"rsa, ed25519,rsa\"\nalgorithms = \"hardened\"\nmacs = [\"hmac-sha2-256-etm@openssh.com\"]\n",
        )
        .unwrap();
        let cfg = s.resolve();
        assert_eq!(cfg.host_key_types, [HostKeyType::Rsa, HostKeyType::Ed25519]);
        let a = cfg.algorithms().unwrap();
        assert_eq!(a.set, AlgorithmSet::Hardened);
        assert_eq!(a.mac.len(), 1);
        assert!(a.overridden);
        for (toml, name) in [
            ("host-key-types = [\"dsa\"]", "dsa"),
            ("algorithms = \"paranoid\"", "paranoid"),
        ] {
            let err = toml::from_str::<Settings>(toml).unwrap_err();
            assert!(err.message().contains(name), "{}", err.message());
        }
        let s: Settings =
            toml::from_str("kex-algorithms = \"curve25519-sha256,bogus-kex\"").unwrap();
        let err = s.resolve().validate().unwrap_err().to_string();
        assert!(err.contains("\"bogus-kex\""), "{err}");
        // Under `hardened` an ECDSA-only gateway would offer no host key at all.
        let s: Settings =
            toml::from_str("algorithms = \"hardened\"\nhost-key-types = [\"ecdsa\"]").unwrap();
        let err = s.resolve().validate().unwrap_err().to_string();
        assert!(err.contains("no host key can be offered"), "{err}");
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let s: Settings =
            toml::from_str("tls-cert = \"/etc/gw/cert.pem\"\ntls-key = \"/etc/gw/key.pem\"\nhook-ca = \"/etc/gw/ca.pem\"")
                .unwrap();
        let cfg = s.resolve();
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.tls_key, Some(PathBuf::from("/etc/gw/key.pem")));
        assert_eq!(cfg.hook_ca, Some(PathBuf::from("/etc/gw/ca.pem")));
        let s: Settings = toml::from_str("tls-cert = \"c.pem\"").unwrap();
        let err = s.resolve().validate().unwrap_err().to_string();
        assert!(err.contains("--tls-cert needs --tls-key"), "{err}");
        let s: Settings = toml::from_str("tls-key = \"k.pem\"").unwrap();
        let err = s.resolve().validate().unwrap_err().to_string();
        assert!(err.contains("--tls-key needs --tls-cert"), "{err}");
        let s: Settings = toml::from_str("on-upload-closed = \"ftp://h/x\"").unwrap();
        let err = s.resolve().validate().unwrap_err().to_string();
        assert!(err.contains("only http:// and https://"), "{err}");
    }

    #[test]
    fn hook_settings_and_a_secret_never_printed() {
        let cfg = Settings::default().resolve();
        assert_eq!(
            (cfg.hook_timeout, cfg.hook_backoff_max, cfg.hook_concurrency),
            (Duration::from_secs(10), Duration::from_secs(300), 16)
        );
        assert_eq!(cfg.outbox_max_events, 100_000);
        let s: Settings = toml::from_str(
            "on-upload-closed = \"http://h/e\"\nhook-secret = \"s3cret\"\nhook-backoff-max = \"2s\"",
        )
        .unwrap();
        let cfg = s.resolve();
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.hook_key().unwrap(), Some(Secret("s3cret".into())));
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").unwrap();
        let s = Settings {
            on_upload_closed: Some("http://h/e".into()),
            hook_secret_file: Some(file.clone()),
            ..Settings::default()
        };
        assert_eq!(
            s.resolve().hook_key().unwrap(),
            Some(Secret("from-file".into()))
        );
        let both = Settings {
            on_upload_closed: Some("http://h/e".into()),
            hook_secret: Some(Secret("a".into())),
            hook_secret_file: Some(file),
            ..Settings::default()
        };
        let err = both.resolve().validate().unwrap_err().to_string();
        assert!(err.contains("both"), "{err}");
        assert!(toml::from_str::<Settings>("hook-secret = \" \"").is_err());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<Settings>("lisen = \"x\"").unwrap_err();
        assert!(err.message().contains("lisen"), "{}", err.message());
    }
}
