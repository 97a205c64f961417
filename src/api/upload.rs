//! `upload`, the customers' other call (the reference's "most simple" way in): its query
//! and its answer. Unlike `request_sftp_access` it answers with HTTP statuses.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Failure;

/// The reference's parameters, plus the resume offset.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The request id.
    // A plain integer here (not `api::request_id`'s schema): utoipa drops `required` from
    // a parameter with `schema_with`, and this one is required.
    #[param(minimum = 1)]
    pub request: u64,
    /// The request's secret key.
    pub key: String,
    /// Append from this byte: accepted only when it is the file's current size (also
    /// `Content-Range: bytes N-*/*`).
    #[param(minimum = 0)]
    pub offset: Option<u64>,
}

/// The answer: `failures` (empty on success) and the file as it is now (absent in a
/// refusal made before the file was looked at).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct UploadAnswer {
    pub failures: Vec<Failure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadState>,
}

/// The upload file after the call; a refusal made once the file was looked at carries
/// only `size`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct UploadState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub request_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Where this call's bytes began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Bytes this call wrote (all synced to disk before the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    /// The file's size now.
    pub size: u64,
}
