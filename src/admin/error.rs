//! The reference API's failure envelope: every response is `{"failures": [...], ...}` and
//! each failure has a `reason` (`AREA:PROBLEM`) and a human `message`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl Failure {
    pub fn new(reason: &str, message: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            message: message.into(),
            value: None,
            expected: None,
            line: None,
        }
    }

    pub fn value(mut self, v: impl Into<Value>) -> Failure {
        self.value = Some(v.into());
        self
    }

    pub fn expected(mut self, e: Vec<String>) -> Failure {
        self.expected = Some(e);
        self
    }
}

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

    pub fn bad(reason: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, Failure::new(reason, message))
    }

    pub fn not_found(id: u64) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            Failure::new("REQUEST:NOT_FOUND", format!("no request {id}")).value(id),
        )
    }

    /// A failure of the gateway's own storage: logged in full, reported without detail.
    pub fn storage(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "storage failure");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Failure::new(
                "STORAGE:UNAVAILABLE",
                "the gateway could not reach its storage (data directory or database)",
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "failures": self.failures }))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
