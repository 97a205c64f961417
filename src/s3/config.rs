//! From `s3://bucket/prefix` and [`S3Options`] to a configured object_store client: the
//! bucket and prefix, the endpoint (AWS's regional one, or an S3-compatible server's),
//! the region, and the credentials, found the usual AWS ways in this order: the options;
//! the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL[_S3]`, and object_store's web
//! identity and container variables, all read by `AmazonS3Builder::from_env`); the
//! profile files (profile.rs); then object_store's instance metadata.
//!
//! Requests are path-style (`ENDPOINT/BUCKET/KEY`): S3-compatible servers need it, AWS
//! still serves it, and signed.rs builds the same URLs as object_store without guessing
//! at virtual-host names. `http://` endpoints are refused unless they are loopback: the
//! credentials sign every request, and a network path in clear text is not ours to allow.

use std::net::IpAddr;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{BackoffConfig, RetryConfig};

use super::error::S3Error;
use super::profile;
use super::transport::Connector;

/// Where the storage is, beyond the URL.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// An S3-compatible server, e.g. `http://127.0.0.1:9000` (`--s3-endpoint`); `None`:
    /// AWS, or `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// `None`: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's, else `us-east-1`.
    pub region: Option<String>,
    /// Static keys that win over every other source (the tests' server takes any).
    pub access: Option<AccessKey>,
}

/// A static access key. Its Debug hides the secret and the token.
#[derive(Clone)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("secret", &"***")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What [`build`] resolved, for the calls signed.rs makes itself.
pub struct Resolved {
    pub store: AmazonS3,
    pub bucket: String,
    /// Without slashes at either end; empty for the bucket's root.
    pub prefix: String,
    pub region: String,
    /// `ENDPOINT/BUCKET`, no trailing slash.
    pub bucket_url: String,
}

/// Retries of object_store's own calls: a few, within a minute (each attempt has its own
/// deadline, transport.rs), so that a call on a dead endpoint ends.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(60),
    }
}

/// Builds the client for `url`, reading the environment through `env` for the profile
/// (the process's own environment in production).
pub fn build(
    url: &str,
    opts: &S3Options,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, S3Error> {
    let (bucket, prefix) = parse_url(url)?;
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&bucket)
        .with_virtual_hosted_style_request(false)
        .with_http_connector(Connector)
        .with_retry(retry_config());

    if let Some(e) = &opts.endpoint {
        // Both keys: AWS_ENDPOINT_URL_S3 would otherwise win over the option.
        b = b
            .with_config(AmazonS3ConfigKey::S3Endpoint, e.as_str())
            .with_endpoint(e.as_str());
    }
    let endpoint = b
        .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
        .or_else(|| b.get_config_value(&AmazonS3ConfigKey::Endpoint));
    if let Some(e) = &endpoint {
        check_endpoint(e)?;
        b = b.with_allow_http(e.starts_with("http://"));
    }

    if let Some(r) = &opts.region {
        b = b.with_region(r.as_str());
    }
    if let Some(a) = &opts.access {
        b = b
            .with_access_key_id(a.id.as_str())
            .with_secret_access_key(a.secret.as_str());
        if let Some(t) = &a.token {
            b = b.with_token(t.as_str());
        }
    }
    let has_keys = b
        .get_config_value(&AmazonS3ConfigKey::AccessKeyId)
        .is_some()
        || b.get_config_value(&AmazonS3ConfigKey::SecretAccessKey)
            .is_some();
    let has_region = b.get_config_value(&AmazonS3ConfigKey::Region).is_some();
    // Web identity and container credentials are object_store's to fetch.
    let other_source = [
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|v| env(v).is_some_and(|s| !s.is_empty()));
    if !has_region || (!has_keys && !other_source) {
        if let Some(p) = profile::load(env).map_err(S3Error::Other)? {
            if !has_keys && !other_source {
                if let (Some(id), Some(secret)) = (p.access_key_id, p.secret_access_key) {
                    b = b.with_access_key_id(id).with_secret_access_key(secret);
                    if let Some(t) = p.session_token {
                        b = b.with_token(t);
                    }
                }
            }
            if let (false, Some(r)) = (has_region, p.region) {
                b = b.with_region(r);
            }
        }
    }

    let region = b
        .get_config_value(&AmazonS3ConfigKey::Region)
        .unwrap_or_else(|| "us-east-1".to_string());
    let bucket_url = match &endpoint {
        Some(e) => format!("{}/{bucket}", e.trim_end_matches('/')),
        None => format!("https://s3.{region}.amazonaws.com/{bucket}"),
    };
    let store = b
        .with_region(region.as_str())
        .build()
        .map_err(|e| S3Error::Other(format!("configuring {url}: {e}")))?;
    Ok(Resolved {
        store,
        bucket,
        prefix,
        region,
        bucket_url,
    })
}

/// `s3://bucket` or `s3://bucket/some/prefix` into the bucket and the prefix (no slashes
/// at its ends).
pub fn parse_url(url: &str) -> Result<(String, String), S3Error> {
    let bad = |why: &str| S3Error::Other(format!("storage URL {url}: {why}"));
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("expected s3://bucket or s3://bucket/prefix"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if !(3..=63).contains(&bucket.len())
        || !bucket.chars().all(valid_char)
        || !bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !bucket.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(bad(
            "a bucket name is 3 to 63 lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit",
        ));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        Path::parse(prefix).map_err(|e| bad(&format!("the prefix: {e}")))?;
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// `https://` anywhere; `http://` only to a loopback host.
pub fn check_endpoint(endpoint: &str) -> Result<(), S3Error> {
    let bad = |why: &str| S3Error::Other(format!("S3 endpoint {endpoint}: {why}"));
    let u = url::Url::parse(endpoint).map_err(|e| bad(&e.to_string()))?;
    if !u.username().is_empty() || u.password().is_some() || u.query().is_some() {
        return Err(bad("no user, password or query belongs in it"));
    }
    match u.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match u.host() {
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(bad(
                    "http:// only to a loopback address (127.0.0.0/8, ::1, localhost); use https://",
                ))
            }
        }
        _ => Err(bad("expected http:// or https://")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("s3://dumps").unwrap(),
            ("dumps".to_string(), String::new())
        );
        assert_eq!(
            parse_url("s3://dumps.eu-1/a/b/").unwrap(),
            ("dumps.eu-1".to_string(), "a/b".to_string())
        );
        for bad in [
            "dumps",
            "s3://",
            "s3://ab",
            "s3://Dumps",
            "s3://-dumps",
            "s3://d/a//b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints() {
        for ok in [
            "https://s3.example.com",
            "http://127.0.0.1:9000",
            "http://127.8.0.1:9000/",
            "http://[::1]:9000",
            "http://localhost:9000",
        ] {
            check_endpoint(ok).unwrap();
        }
        assert_eq!(
            check_endpoint("http://10.0.0.5:9000").unwrap_err().to_string(),
            "S3: S3 endpoint http://10.0.0.5:9000: http:// only to a loopback address (127.0.0.0/8, ::1, localhost); use https://"
        );
        assert!(check_endpoint("ftp://127.0.0.1").is_err());
        assert!(check_endpoint("https://key:secret@s3.example.com").is_err());
    }
}
