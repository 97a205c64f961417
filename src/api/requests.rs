//! The operator's request routes: the record as the API shows it, the bodies it takes and
//! the answers it gives.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::{time_format, Failure};
use crate::store::State;

/// The operator's view of a request: everything but its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    #[schema(schema_with = super::request_id)]
    pub id: u64,
    pub filename: String,
    pub state: State,
    /// `user_<id>`.
    pub sftp_user: String,
    /// The one file a login sees now (`<filename>` in draft, `upgraded_<filename>` when
    /// done); `null` while logins are refused.
    #[schema(required = true)]
    pub shared_file: Option<String>,
    /// What SFTP clients connect to (`--public-host`, `--public-port`).
    pub hostname: String,
    pub sftp_port: u16,
    /// `sftp -P <port> user_<id>@<host>`.
    pub sample_command: String,
    /// Logins are refused from then on.
    #[serde(with = "time_format::option")]
    #[schema(required = true)]
    pub expires_at: Option<OffsetDateTime>,
    /// The expiry the operator set: the ceiling of the customer's `request_sftp_access`.
    #[serde(with = "time_format::option")]
    #[schema(required = true)]
    pub operator_expires_at: Option<OffsetDateTime>,
    pub ssh_keys: Vec<KeyView>,
    /// Bytes uploaded so far.
    pub filesize: u64,
    /// The upgraded dump's size, `null` until it is stored.
    #[schema(required = true)]
    pub upgraded_filesize: Option<u64>,
    /// The last write to the upload through this node.
    #[serde(with = "time_format::option")]
    #[schema(required = true)]
    pub last_write_at: Option<OffsetDateTime>,
    /// A write handle is open on this node now.
    pub writing: bool,
    /// Live SFTP sessions, on every node.
    pub sessions: usize,
    /// Their client addresses (`ip:port`), at most 100.
    pub peers: Vec<String>,
    /// The live sessions per node that has some, this node first.
    pub nodes: Vec<NodeSessions>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One authorized key of a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    /// `SHA256:...`, as OpenSSH prints it.
    pub fingerprint: String,
    pub algorithm: String,
    pub comment: String,
}

/// A node's live sessions of one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeSessions {
    pub node: String,
    pub sessions: usize,
    pub peers: Vec<String>,
}

/// The answer about one request.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct OneRequest {
    #[schema(max_items = 0)]
    pub failures: Vec<Failure>,
    pub request: RequestView,
}

/// The answer to a delete: the record as it was, `null` when only a purge of files left
/// behind by an earlier delete was done.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    #[schema(max_items = 0)]
    pub failures: Vec<Failure>,
    #[schema(required = true)]
    pub request: Option<RequestView>,
}

/// One page of requests, by id.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RequestList {
    #[schema(max_items = 0)]
    pub failures: Vec<Failure>,
    pub requests: Vec<RequestView>,
    /// Pass as `after` for the next page; `null` on the last page.
    #[serde(default)]
    #[schema(required = true, schema_with = super::next_id)]
    pub next: Option<u64>,
}

/// The query of `GET /v1/requests`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// At most this many requests (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only requests whose id is greater: the previous page's `next`.
    #[param(schema_with = super::any_id)]
    pub after: Option<u64>,
    /// Only requests in this state.
    #[param(inline)]
    pub state: Option<State>,
    /// Only requests changed at or after this time (RFC 3339).
    #[serde(default, with = "time_format::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub updated_since: Option<OffsetDateTime>,
}

impl ListQuery {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1000;
}

/// The body of `PUT /v1/requests/{id}`: every field optional, but `filename` and `key`
/// are needed to create a request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRequest {
    /// The shared file's name: at most 255 bytes of UTF-8, not `.` or `..`, without `/`
    /// or control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^(?!\.\.?$)[^/\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub filename: Option<String>,
    /// The request's secret key (only its hash is kept): without white space or control
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        pattern = r"^[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$"
    )]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<State>)]
    pub state: Option<String>,
    /// authorized_keys text: replaces the request's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_keys: Option<String>,
    /// RFC 3339, or `null` to lift it; also the ceiling of the customer's
    /// `request_sftp_access`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The body of `POST /v1/requests/{id}/state`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    #[schema(value_type = State)]
    pub state: String,
}

/// The query of `DELETE /v1/requests/{id}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Also delete the request's files, and those an earlier delete kept.
    #[serde(default)]
    pub purge: bool,
}

/// The `{id}` of a request's routes.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RequestIdPath {
    /// The request id: a positive decimal integer, without sign or leading zeros.
    #[param(schema_with = super::request_id)]
    pub id: String,
}
