//! `GET /v1/server`: what operators publish to customers so that they can verify the
//! gateway on first connect: every host key's SHA-256 fingerprint, with the signature
//! algorithms it is offered under, the algorithm set in force and this node's name. Behind
//! the token like every `/v1` route: fingerprints are public (any client sees the keys), but
//! the node name and set are operator detail, and one rule for all of `/v1` is simpler to
//! audit than exceptions.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::AdminState;

/// One host key as published.
#[derive(Clone, Debug, Serialize)]
pub struct PublishedHostKey {
    /// `ed25519`, `ecdsa` or `rsa`, as `--host-key-types` names it.
    pub r#type: &'static str,
    /// The key's own algorithm (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`).
    pub algorithm: String,
    /// `SHA256:...`, as OpenSSH prints it.
    pub fingerprint: String,
    /// The host-key algorithms it is offered under; empty if the set offers none for it.
    pub offered_as: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerInfo {
    pub node: String,
    pub algorithm_set: &'static str,
    /// Whether the config file replaced any of the set's lists.
    pub algorithms_overridden: bool,
    pub host_keys: Vec<PublishedHostKey>,
}

pub async fn get_server(State(state): State<Arc<AdminState>>) -> Json<ServerInfo> {
    Json(state.server_info.clone())
}
