//! Every failure reason the HTTP API gives, as one enum: the server builds failures from it,
//! the CLI reads them back into it, the OpenAPI spec lists it, and a test checks the
//! README's list against it.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};

/// Declares [`Reason`] with its wire text and a line of documentation per reason, so the
/// three can never drift apart.
macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $variant:ident = $text:literal,)*) => {
        /// Why a call failed: `AREA:PROBLEM`, as the reference API spells it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in the order they are declared (and documented).
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The reason as it appears on the wire, e.g. `SSH_KEYS:INVALID`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $text,)*
                }
            }

            /// What the reason means, from its documentation.
            pub fn description(self) -> &'static str {
                match self {
                    $(Reason::$variant => concat!($($doc),*).trim_ascii(),)*
                }
            }
        }
    };
}

reasons! {
    /// The operator's `expires_at` has passed: only the operator can reopen access.
    AccessExpired = "ACCESS:EXPIRED",
    /// No `Authorization: Bearer` header.
    AuthMissing = "AUTH:MISSING",
    /// The admin token is wrong.
    AuthInvalid = "AUTH:INVALID",
    /// The body is not JSON of the route's shape.
    BodyInvalidJson = "BODY:INVALID_JSON",
    /// The body is over the 1 MiB limit of JSON and form routes (413).
    BodyTooLarge = "BODY:TOO_LARGE",
    /// The body could not be read.
    BodyInvalid = "BODY:INVALID",
    /// A streamed upload was cut off before its end.
    BodyInterrupted = "BODY:INTERRUPTED",
    /// A query parameter is not valid.
    QueryInvalid = "QUERY:INVALID",
    /// The request id in the path is not a positive decimal integer.
    RequestInvalidId = "REQUEST:INVALID_ID",
    /// No request with this id.
    RequestNotFound = "REQUEST:NOT_FOUND",
    /// `request_sftp_access` without its `request` parameter.
    RequestMissing = "REQUEST:MISSING",
    /// `request_sftp_access` with a `request` that is not a request id.
    RequestInvalid = "REQUEST:INVALID",
    /// `request_sftp_access` whose query string or form body cannot be parsed.
    RequestMalformed = "REQUEST:MALFORMED",
    /// `request_sftp_access` without its `key` parameter.
    KeyMissing = "KEY:MISSING",
    /// A request is created without a `key`.
    KeyRequired = "KEY:REQUIRED",
    /// A key with spaces or control characters (operator), or a wrong key or unknown request (customer).
    KeyInvalid = "KEY:INVALID",
    /// Too many wrong keys from the caller's address.
    KeyThrottled = "KEY:THROTTLED",
    /// A request is created without a `filename`.
    FilenameRequired = "FILENAME:REQUIRED",
    /// The file name is empty, over 255 bytes, `.`/`..`, or holds `/` or control characters.
    FilenameInvalid = "FILENAME:INVALID",
    /// An unknown state, or (customer) a state that grants no access.
    StateInvalid = "STATE:INVALID",
    /// `expires_at` is neither an RFC 3339 time nor `null`.
    ExpiresAtInvalid = "EXPIRES_AT:INVALID",
    /// `request_sftp_access` without its `ssh_keys` file.
    SshKeysMissing = "SSH_KEYS:MISSING",
    /// A line of the keys file is not a usable public key (one failure per line, with `line`).
    SshKeysInvalid = "SSH_KEYS:INVALID",
    /// The keys file holds no public key.
    SshKeysEmpty = "SSH_KEYS:EMPTY",
    /// The keys file is over 100 keys or 64 KiB.
    SshKeysTooLarge = "SSH_KEYS:TOO_LARGE",
    /// A request cannot be done before its upgraded file is uploaded.
    UpgradedMissing = "UPGRADED:MISSING",
    /// Nothing was uploaded yet.
    OriginalMissing = "ORIGINAL:MISSING",
    /// The `Range` cannot be served (416).
    RangeInvalid = "RANGE:INVALID",
    /// No such route (404).
    RouteNotFound = "ROUTE:NOT_FOUND",
    /// The route does not take this method (405).
    MethodNotAllowed = "METHOD:NOT_ALLOWED",
    /// The data directory or database did not answer (503).
    StorageUnavailable = "STORAGE:UNAVAILABLE",
    /// The data directory takes no writes (503, `/healthz`).
    HealthDataDir = "HEALTH:DATA_DIR",
    /// The listener is at `--http-max-connections` (503, then closed).
    HttpTooManyConnections = "HTTP:TOO_MANY_CONNECTIONS",
    /// Plain HTTP sent to a listener that serves HTTPS (`--tls-cert`): use an https:// URL.
    HttpTlsRequired = "HTTP:TLS_REQUIRED",
    /// `upload`: `offset` (or a `Content-Range` start) is not a byte count.
    OffsetInvalid = "OFFSET:INVALID",
    /// `upload`: an append that does not start at the file's current size (409, with the size).
    OffsetMismatch = "OFFSET:MISMATCH",
    /// `upload`: another upload (SFTP or HTTP) of the request is writing (409, after `--lease-wait`).
    UploadBusy = "UPLOAD:BUSY",
    /// `upload`: the body would pass `--max-upload-size` (413).
    UploadTooLarge = "UPLOAD:TOO_LARGE",
    /// `upload`: this node lost the upload's lease mid-body; what was written is kept (503).
    UploadLeaseLost = "UPLOAD:LEASE_LOST",
    /// `upload`: the gateway is shutting down; what was written is kept (503).
    GatewayStopping = "GATEWAY:STOPPING",
}

impl Reason {
    /// The reason spelt `text`, if there is one.
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == text)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        Reason::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown failure reason {text:?}")))
    }
}

impl utoipa::PartialSchema for Reason {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .description(Some("Why the call failed, `AREA:PROBLEM`."))
            .enum_values(Some(Reason::ALL.iter().map(|r| r.as_str())))
            .into()
    }
}

impl utoipa::ToSchema for Reason {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn reasons_round_trip_and_are_unique() {
        let texts: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(texts.len(), Reason::ALL.len());
        for r in Reason::ALL {
            let json = serde_json::to_string(r).unwrap();
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), *r);
            assert!(!r.description().is_empty(), "{r}");
            let (area, problem) = r.as_str().split_once(':').unwrap();
            assert!(
                [area, problem].iter().all(
                    |p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                ),
                "{r}"
            );
        }
        assert!(serde_json::from_str::<Reason>("\"NOPE:NOPE\"").is_err());
    }

    /// The README's paragraph "Failure reasons:" names exactly the reasons of the enum.
    #[test]
    fn the_readme_lists_every_reason() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("\nFailure reasons")
            .expect("README.md has a paragraph starting \"Failure reasons\"");
        let paragraph = readme[start + 1..].split("\n\n").next().unwrap_or("");
        let listed: BTreeSet<&str> = paragraph
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|t| {
                t.contains(':')
                    && t.bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b':')
            })
            .collect();
        let known: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let missing: Vec<_> = known.difference(&listed).collect();
        let unknown: Vec<_> = listed.difference(&known).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "README.md's failure reasons differ from api::Reason: missing {missing:?}, not reasons {unknown:?}"
        );
    }
}
