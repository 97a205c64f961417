//! authorized_keys parsing, as a customer uploads it: public keys, optionally with options,
//! blank lines and `#` comments. Every bad line is reported with its number; one bad line
//! rejects the whole file.

use std::net::IpAddr;

use russh::keys::ssh_key::{authorized_keys::Entry, Algorithm, PublicKey};
use time::{macros::format_description, OffsetDateTime, PrimitiveDateTime};

use super::pattern::{match_pattern_list, validate_pattern_list};

pub const MAX_KEYS: usize = 100;
pub const MAX_BYTES: usize = 64 * 1024;
const MIN_RSA_BITS: u32 = 2048;

/// One accepted key and the options that restrict it.
#[derive(Clone, Debug)]
pub struct AuthorizedKey {
    pub key: PublicKey,
    pub options: KeyOptions,
    /// 1-based line number in the uploaded text.
    pub line: usize,
}

#[derive(Clone, Debug, Default)]
pub struct KeyOptions {
    /// `from="..."`: the client address must match this pattern list.
    pub from: Option<String>,
    /// `expiry-time="..."`: the key stops working at this time.
    pub expiry: Option<OffsetDateTime>,
    /// Options the gateway cannot honour, to be reported as warnings.
    pub ignored: Vec<String>,
}

impl AuthorizedKey {
    /// Whether this key may log in from `ip` at `now` (its options permitting).
    pub fn allows(&self, ip: Option<IpAddr>, now: OffsetDateTime) -> bool {
        if self.options.expiry.is_some_and(|t| now >= t) {
            return false;
        }
        match (&self.options.from, ip) {
            (Some(list), Some(ip)) => match_pattern_list(list, ip),
            (Some(_), None) => false,
            (None, _) => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLineError {
    pub line: usize,
    /// The first 40 characters of the line.
    pub value: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeysError {
    #[error("{} invalid line(s) in the SSH keys file", .0.len())]
    Invalid(Vec<KeyLineError>),
    #[error("the SSH keys file contains no public key")]
    Empty,
    #[error("the SSH keys file is too large: {0}")]
    TooLarge(String),
}

/// Parses an authorized_keys text; every key type russh can verify is accepted except DSA
/// and RSA under 2048 bits.
pub fn parse_authorized_keys(text: &str) -> Result<Vec<AuthorizedKey>, KeysError> {
    if text.len() > MAX_BYTES {
        return Err(KeysError::TooLarge(format!(
            "{} bytes, at most {MAX_BYTES} are accepted",
            text.len()
        )));
    }
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok((key, options)) => keys.push(AuthorizedKey {
                key,
                options,
                line: i + 1,
            }),
            Err(message) => errors.push(KeyLineError {
                line: i + 1,
                value: line.chars().take(40).collect(),
                message,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(KeysError::Invalid(errors));
    }
    if keys.is_empty() {
        return Err(KeysError::Empty);
    }
    if keys.len() > MAX_KEYS {
        return Err(KeysError::TooLarge(format!(
            "{} keys, at most {MAX_KEYS} are accepted",
            keys.len()
        )));
    }
    Ok(keys)
}

fn parse_line(line: &str) -> Result<(PublicKey, KeyOptions), String> {
    if line.split_whitespace().any(|t| t == "ssh-dss") {
        return Err(
            "DSA keys (ssh-dss) are not accepted: use an ed25519 or RSA (2048+ bits) key".into(),
        );
    }
    let entry: Entry = line
        .parse()
        .map_err(|e| format!("not a valid public key line ({e})"))?;
    let key = entry.public_key().clone();
    match key.algorithm() {
        Algorithm::Dsa => {
            return Err(
                "DSA keys (ssh-dss) are not accepted: use an ed25519 or RSA (2048+ bits) key"
                    .into(),
            )
        }
        Algorithm::Rsa { .. } => {
            let bits = key.key_data().rsa().map(|k| k.key_size()).unwrap_or(0);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA key of {bits} bits is too weak: at least {MIN_RSA_BITS} bits are required"
                ));
            }
        }
        Algorithm::Other(name) => return Err(format!("unsupported key type {}", name.as_str())),
        _ => {}
    }
    let options = parse_options(entry.config_opts().iter())?;
    Ok((key, options))
}

/// Options that only restrict what a session may do: every sftpgate session is already
/// restricted to SFTP on one file, so these are honoured by construction.
const ALREADY_ENFORCED: &[&str] = &[
    "restrict",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-user-rc",
    "no-x11-forwarding",
    "permitopen",
    "permitlisten",
    "tunnel",
];

/// Options OpenSSH knows that the gateway cannot honour.
const NOT_HONOURED: &[&str] = &[
    "command",
    "environment",
    "agent-forwarding",
    "port-forwarding",
    "pty",
    "user-rc",
    "x11-forwarding",
    "no-touch-required",
    "verify-required",
];

fn parse_options<'a>(opts: impl Iterator<Item = &'a str>) -> Result<KeyOptions, String> {
    let mut out = KeyOptions::default();
    for opt in opts {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(unquote(v)?)),
            None => (opt, None),
        };
        let lname = name.to_ascii_lowercase();
        match (lname.as_str(), value) {
            ("from", Some(v)) => {
                validate_pattern_list(v).map_err(|e| format!("from=: {e}"))?;
                out.from = Some(v.to_string());
            }
            ("expiry-time", Some(v)) => {
                out.expiry = Some(
                    parse_expiry(v)
                        .ok_or_else(|| format!("expiry-time=\"{v}\" is not YYYYMMDD[HHMM[SS]]"))?,
                );
            }
            ("cert-authority" | "principals", _) => {
                return Err(
                    "certificate authorities are not supported: list plain public keys".into(),
                )
            }
            (n, _) if ALREADY_ENFORCED.contains(&n) => {}
            (n, _) if NOT_HONOURED.contains(&n) => out.ignored.push(opt.to_string()),
            _ => return Err(format!("unknown option \"{name}\"")),
        }
    }
    Ok(out)
}

fn unquote(v: &str) -> Result<&str, String> {
    match v.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or_else(|| format!("unterminated quote in {v}")),
        None => Ok(v),
    }
}

/// OpenSSH's `YYYYMMDD[HHMM[SS]]`, read as UTC (a trailing `Z` is accepted too).
fn parse_expiry(v: &str) -> Option<OffsetDateTime> {
    let v = v.strip_suffix('Z').unwrap_or(v);
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let padded = match v.len() {
        8 => format!("{v}000000"),
        12 => format!("{v}00"),
        14 => v.to_string(),
        _ => return None,
    };
    let fmt = format_description!("[year][month][day][hour][minute][second]");
    PrimitiveDateTime::parse(&padded, fmt)
        .ok()
        .map(|t| t.assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKbk4EHF3X5miABPFC3UVX+U9igZJxLC2U169zVW+L4W alice@laptop";

    fn invalid(text: &str) -> Vec<KeyLineError> {
        match parse_authorized_keys(text) {
            Err(KeysError::Invalid(e)) => e,
            other => panic!("expected invalid lines, got {other:?}"),
        }
    }

    #[test]
    fn comments_blank_lines_and_options() {
        let text = format!(
            "# my keys\n\n{ED}\n  \nfrom=\"127.0.0.0/8\",no-pty,expiry-time=\"20991231\" {ED}\ncommand=\"ls\" {ED}\n"
        );
        let keys = parse_authorized_keys(&text).unwrap();
        assert_eq!(keys.iter().map(|k| k.line).collect::<Vec<_>>(), [3, 5, 6]);
        assert_eq!(keys[0].key.comment().as_str_lossy(), "alice@laptop");
        assert_eq!(keys[1].options.from.as_deref(), Some("127.0.0.0/8"));
        assert!(keys[1].options.expiry.is_some());
        assert_eq!(keys[2].options.ignored, ["command=\"ls\""]);
        let now = OffsetDateTime::now_utc();
        assert!(keys[1].allows(Some("127.0.0.1".parse().unwrap()), now));
        assert!(!keys[1].allows(Some("192.0.2.1".parse().unwrap()), now));
        assert!(!keys[1].allows(None, now));
    }

    #[test]
    fn expired_key_is_refused() {
        let keys = parse_authorized_keys(&format!("expiry-time=\"20200101\" {ED}")).unwrap();
        assert!(!keys[0].allows(None, OffsetDateTime::now_utc()));
    }

    #[test]
    fn every_bad_line_is_reported() {
        let text = format!(
            "{ED}\nnot a key at all\nssh-dss AAAAB3NzaC1kc3MAAACBAP\nssh-ed25519 AAAA!!!\nbogus-option {ED}\n"
        );
        let errors = invalid(&text);
        assert_eq!(
            errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            [2, 3, 4, 5]
        );
        assert_eq!(errors[0].value, "not a key at all");
        assert!(errors[1].message.contains("DSA"), "{}", errors[1].message);
        assert!(
            errors[3].message.contains("unknown option"),
            "{}",
            errors[3].message
        );
        assert!(errors.iter().all(|e| e.value.chars().count() <= 40));
    }

    #[test]
    fn weak_rsa_is_refused() {
        // A 1024-bit RSA key.
        let rsa1024 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCgH1k75M944lncmXTjLeq/eO/RtvZAyDQHBVTQaCEyzVYlHWfB7Lj1njLxkpLmuMIBKxWdx885tRkSwh/v7yaDJkOIZYYOkfKu9f8/eY1ANvhK1yNe73yqo/y5lgLcajDYFv/xZihkQwCTlv/SbN4CufxZA4rNc0/7JRq0fsli+w== weak";
        let errors = invalid(rsa1024);
        assert!(
            errors[0].message.contains("1024 bits"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn empty_and_too_large() {
        assert_eq!(
            parse_authorized_keys("# nothing\n\n").unwrap_err(),
            KeysError::Empty
        );
        assert_eq!(parse_authorized_keys("").unwrap_err(), KeysError::Empty);
        let many = format!("{ED}\n").repeat(MAX_KEYS + 1);
        assert!(matches!(
            parse_authorized_keys(&many),
            Err(KeysError::TooLarge(_))
        ));
        let huge = "#".repeat(MAX_BYTES + 1);
        assert!(matches!(
            parse_authorized_keys(&huge),
            Err(KeysError::TooLarge(_))
        ));
    }

    #[test]
    fn expiry_formats() {
        assert!(parse_expiry("20261231").is_some());
        assert!(parse_expiry("202612312359").is_some());
        assert!(parse_expiry("20261231235959Z").is_some());
        assert!(parse_expiry("2026123").is_none());
        assert!(parse_expiry("20261331").is_none());
    }
}
