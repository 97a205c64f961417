//! `request_sftp_access`, the customers' call: its parameters and its answer, which is
//! always HTTP 200, as in the reference.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::{time_format, Failure};

/// `request` and `key` may come in the query string (as the reference's samples send
/// them) or as form fields (which win).
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccessQuery {
    /// The request id.
    pub request: Option<String>,
    /// The request's secret key. Pasted unencoded, its `+` arrive as spaces: that
    /// reading is tried too.
    pub key: Option<String>,
    /// The authorized_keys text, for a client that cannot send a form (the form's field
    /// wins).
    pub ssh_keys: Option<String>,
}

/// The form body (multipart, as `curl -F` sends it, or URL-encoded).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct AccessForm {
    /// The request id.
    pub request: Option<String>,
    /// The request's secret key.
    pub key: Option<String>,
    /// The customer's authorized_keys file (at most 100 keys, 64 KiB): replaces the
    /// request's keys.
    #[schema(value_type = Option<String>, format = Binary)]
    pub ssh_keys: Option<String>,
}

/// The answer: `failures` empty and `warnings` and `request` there on success, only
/// `failures` otherwise.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct AccessAnswer {
    pub failures: Vec<Failure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<AccessWarning>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AccessGranted>,
}

impl AccessAnswer {
    pub fn refused(failures: Vec<Failure>) -> AccessAnswer {
        AccessAnswer {
            failures,
            ..AccessAnswer::default()
        }
    }
}

/// A key option the gateway cannot honour and ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccessWarning {
    #[schema(minimum = 1)]
    pub line: usize,
    pub option: String,
    pub message: String,
}

/// Where and until when the customer may connect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccessGranted {
    pub hostname: String,
    pub sftp_port: u16,
    pub sftp_user: String,
    /// `<filename>` in draft, `upgraded_<filename>` when done.
    pub shared_file: String,
    #[schema(schema_with = super::request_id)]
    pub request_id: u64,
    pub sample_command: String,
    #[serde(with = "time_format::option")]
    #[schema(required = true)]
    pub expires_at: Option<OffsetDateTime>,
}
