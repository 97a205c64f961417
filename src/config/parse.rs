//! The parsers of setting values, shared by the flags (clap's `value_parser`) and the
//! TOML file (serde's `deserialize_with`, the `*_opt` functions): durations, networks,
//! store and storage URLs, part sizes, secrets and comma-separated lists, each with an
//! error that names what was wrong.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

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

pub(super) fn secret_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Secret>, D::Error> {
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
pub(super) fn redact_password(url: &str) -> String {
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

pub(super) fn store_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<StoreSpec>, D::Error> {
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

pub(super) fn storage_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<StorageSpec>, D::Error> {
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

pub(super) fn part_size_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u64>, D::Error> {
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
pub(super) fn nets_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<IpNet>>, D::Error> {
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
pub(super) fn list_opt<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
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

pub(super) fn duration_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}
