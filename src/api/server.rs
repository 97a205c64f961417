//! The answers of the node's own routes: `GET /v1/server` (what operators publish to
//! customers) and `GET /healthz`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Failure;

/// One host key as published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PublishedHostKey {
    /// `ed25519`, `ecdsa` or `rsa`, as `--host-key-types` names it.
    pub r#type: String,
    /// The key's own algorithm (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`).
    pub algorithm: String,
    /// `SHA256:...`, as OpenSSH prints it.
    pub fingerprint: String,
    /// The host-key algorithms it is offered under; empty if the set offers none for it.
    pub offered_as: Vec<String>,
}

/// This node's host keys and algorithm set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    /// `--node-name`.
    pub node: String,
    /// `compatible` or `hardened`.
    pub algorithm_set: String,
    /// Whether the config file replaced any of the set's lists.
    pub algorithms_overridden: bool,
    pub host_keys: Vec<PublishedHostKey>,
}

/// A healthy node's answer to `GET /healthz`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    #[schema(max_items = 0)]
    pub failures: Vec<Failure>,
    #[schema(value_type = String, example = "ok", pattern = "^ok$")]
    pub status: String,
}
