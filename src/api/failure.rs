//! The reference API's failure envelope: every body is `{"failures": [...], ...}`, each
//! failure a [`Reason`] and a human `message`, with `value`, `expected` or `line` where
//! they help.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::Reason;

/// One failure. The fields are in alphabetical order, as the answers before this type had
/// them (they were sorted JSON maps): a client comparing bytes sees no change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Failure {
    /// The values that would have been accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Vec<String>>,
    /// The line of the SSH keys file the failure is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub line: Option<usize>,
    pub message: String,
    pub reason: Reason,
    /// The offending value (its first 40 characters for text), where that helps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub value: Option<Value>,
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Failure {
        Failure {
            reason,
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

    pub fn line(mut self, line: usize) -> Failure {
        self.line = Some(line);
        self
    }
}

/// A refused call: one failure or more, and nothing else.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Refusal {
    #[schema(min_items = 1)]
    pub failures: Vec<Failure>,
}

/// The `failures` of an answer, whatever else it holds: what a client reads first.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub failures: Vec<Failure>,
}
