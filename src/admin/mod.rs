//! The operator HTTP API (axum). The `/v1` routes take `Authorization: Bearer <admin
//! token>`; every body is the reference's failure envelope (the types are in [`crate::api`],
//! the spec served at `/openapi.json` in openapi.rs).

mod access;
mod body;
mod error;
mod files;
mod form;
mod list_query;
mod listener;
mod login_throttle;
mod merge;
pub mod openapi;
mod page;
mod requests;
mod server_info;
mod session;
mod tls;
mod upload;
mod view;
mod write_stall;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use subtle::ConstantTimeEq;

pub use error::{ApiError, ApiResult};
pub use listener::{serve, HttpLimits};
pub use session::Sessions;
pub use tls::{reload_on_hangup, Tls, TlsError, TlsFiles};
// Pure parsers, public only for the fuzz targets (see `crate::fuzzing`).
#[doc(hidden)]
pub use files::parse_range;
#[doc(hidden)]
pub use form::{parse_access_form, AccessParams};

use crate::api::{Failure, Health, Reason, Refusal, ServerInfo};
use crate::gateway::Gateway;

/// JSON bodies larger than this are refused; dumps go through the streaming routes.
const MAX_JSON_BODY: usize = 1024 * 1024;

pub struct AdminState {
    pub gateway: Arc<Gateway>,
    /// This node's `--node-name`, as the API labels its live sessions.
    pub node: String,
    pub token: String,
    /// What responses tell SFTP clients to connect to.
    pub public_host: String,
    pub public_port: u16,
    /// How long `request_sftp_access` opens access for.
    pub access_ttl: time::Duration,
    pub throttle: access::Throttle,
    pub data_dir: std::path::PathBuf,
    pub samples: page::Samples,
    /// Status page logins, and failed ones per source.
    pub sessions: Sessions,
    pub logins: login_throttle::LoginThrottle,
    /// The page is served over https (this listener's TLS, or a proxy in front): its
    /// cookie gets `Secure`.
    pub page_https: bool,
    /// Throttled attempts cost a client nothing to repeat: a few are logged per window,
    /// the rest counted into the next line.
    pub throttled_log: std::sync::Mutex<crate::ratelog::LogBudget>,
    /// Host-key fingerprints and the algorithm set, for `GET /v1/server`.
    pub server_info: ServerInfo,
    /// Cancelled when the gateway stops: customers' uploads end (synced) rather than hold
    /// the stop up.
    pub shutdown: tokio_util::sync::CancellationToken,
}

pub fn router(state: Arc<AdminState>) -> Router {
    let api = Router::new()
        .route("/v1/server", get(server_info::get_server))
        .route("/v1/requests", get(requests::list))
        .route(
            "/v1/requests/{id}",
            get(requests::show)
                .put(requests::put)
                .delete(requests::delete),
        )
        .route("/v1/requests/{id}/state", post(requests::set_state))
        .route(
            "/v1/requests/{id}/upgraded",
            put(files::put_upgraded).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/requests/{id}/original", get(files::get_original))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve_spec))
        .merge(
            Router::new()
                .route("/", get(page::index))
                .route("/login", post(page::login))
                .route("/logout", post(page::logout))
                .layer(middleware::map_response(page::security_headers)),
        )
        .route(
            "/database/v1/request_sftp_access",
            post(access::request_sftp_access),
        )
        .route(
            "/database/v1/upload",
            post(upload::upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .merge(api)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                Failure::new(Reason::RouteNotFound, "no such route"),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Failure::new(Reason::MethodNotAllowed, "method not allowed on this route"),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY))
        .with_state(state)
}

/// Ready when the listeners are up (this answer proves the admin one; the SSH one is bound
/// before it), the data directory takes writes and the store answers: a node whose
/// database is unreachable refuses every login, so the balancer should drain it (503,
/// `STORAGE:UNAVAILABLE`) until it answers again.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "node",
    summary = "Readiness, for load balancers",
    operation_id = "healthz",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "`HEALTH:DATA_DIR` or `STORAGE:UNAVAILABLE`", body = Refusal),
    ),
    security(()),
)]
pub(crate) async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    let dir = state.data_dir.clone();
    let writable = tokio::task::spawn_blocking(move || tempfile::tempfile_in(&dir).map(drop)).await;
    match writable {
        Ok(Ok(())) => match state.gateway.store_health().await {
            Ok(()) => Json(Health {
                failures: Vec::new(),
                status: "ok".into(),
            })
            .into_response(),
            Err(e) => {
                tracing::warn!(error = %e, "health check: the request store is unreachable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Failure::new(
                        Reason::StorageUnavailable,
                        "the request store (database) is unreachable; logins are refused",
                    ),
                )
                .into_response()
            }
        },
        Ok(Err(e)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Failure::new(
                Reason::HealthDataDir,
                format!("the data directory is not writable: {e}"),
            ),
        )
        .into_response(),
        Err(e) => ApiError::storage(e).into_response(),
    }
}

/// Prometheus text format; like /healthz it needs no token (it holds no secret).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    summary = "Prometheus metrics",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 503, description = "`STORAGE:UNAVAILABLE`", body = Refusal),
    ),
    security(()),
)]
pub(crate) async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    match state.gateway.render_metrics().await {
        Ok(page) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], page).into_response(),
        Err(e) => ApiError::storage(e).into_response(),
    }
}

async fn require_token(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            Failure::new(
                Reason::AuthMissing,
                "an Authorization: Bearer <admin token> header is required",
            ),
        )
        .into_response(),
        Some(t) if !bool::from(t.trim().as_bytes().ct_eq(state.token.as_bytes())) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            Failure::new(Reason::AuthInvalid, "the admin token is not valid"),
        )
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

/// Parses a request id from the path (see [`crate::api::parse_id`]).
pub(crate) fn parse_id(raw: &str) -> ApiResult<u64> {
    crate::api::parse_id(raw).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            Failure::new(
                Reason::RequestInvalidId,
                "a request id is a positive integer",
            )
            .value(raw.chars().take(40).collect::<String>()),
        )
    })
}
