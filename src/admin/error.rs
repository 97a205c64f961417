//! An error answer: a status and the reference's failure envelope (see [`crate::api`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::{Failure, Reason, Refusal};

/// An error response: a status and one or more failures.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub failures: Vec<Failure>,
}

impl ApiError {
    pub fn new(status: StatusCode, failure: Failure) -> ApiError {
        ApiError {
            status,
            failures: vec![failure],
        }
    }

    pub fn bad(reason: Reason, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, Failure::new(reason, message))
    }

    /// A 400 with every failure found at once (a body or query with several faults).
    pub fn bad_all(failures: Vec<Failure>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            failures,
        }
    }

    pub fn not_found(id: u64) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            Failure::new(Reason::RequestNotFound, format!("no request {id}")).value(id),
        )
    }

    /// A failure of the gateway's own storage: logged in full, reported without detail.
    pub fn storage(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "storage failure");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Failure::new(
                Reason::StorageUnavailable,
                "the gateway could not reach its storage (data directory or database)",
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Refusal {
            failures: self.failures,
        };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
