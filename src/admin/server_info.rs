//! `GET /v1/server`: what operators publish to customers so that they can verify the
//! gateway on first connect: every host key's SHA-256 fingerprint, with the signature
//! algorithms it is offered under, the algorithm set in force and this node's name. Behind
//! the token like every `/v1` route: fingerprints are public (any client sees the keys), but
//! the node name and set are operator detail, and one rule for all of `/v1` is simpler to
//! audit than exceptions.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::AdminState;
use crate::api::ServerInfo;

#[utoipa::path(
    get,
    path = "/v1/server",
    tag = "node",
    summary = "This node's host keys and algorithm set",
    operation_id = "getServer",
    responses(
        (status = 200, description = "The host-key fingerprints to publish", body = ServerInfo),
    ),
    security(("bearer" = [])),
)]
pub async fn get_server(State(state): State<Arc<AdminState>>) -> Json<ServerInfo> {
    Json(state.server_info.clone())
}
