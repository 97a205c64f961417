//! The HTTP API's contract, written once: every body the server sends or takes, and every
//! failure reason, as types that the server (`admin/`), the CLI (`cli.rs`) and the OpenAPI
//! spec (`admin/openapi.rs`) all use. It depends on nothing but the store's `State`, so
//! that either side can import it.

mod access;
mod failure;
mod reason;
mod requests;
mod server;
pub mod time_format;
mod upload;

pub use access::{AccessAnswer, AccessForm, AccessGranted, AccessQuery, AccessWarning};
pub use failure::{Envelope, Failure, Refusal};
pub use reason::Reason;
pub use requests::{
    DeleteQuery, Deleted, KeyView, ListQuery, NodeSessions, OneRequest, PutRequest, RequestIdPath,
    RequestList, RequestView, StateChange,
};
pub use server::{Health, PublishedHostKey, ServerInfo};
pub use upload::{UploadAnswer, UploadQuery, UploadState};

/// A request id as written in a path, a form or a command line: a positive decimal
/// integer, without sign or leading zeros.
pub use crate::store::parse_id;

use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};

/// The command that connects to request `id`'s one file, as told to customers.
pub fn sample_command(host: &str, port: u16, id: u64) -> String {
    format!(
        "sftp -P {port} {}@{host}",
        crate::store::Record::user_name(id)
    )
}

/// A dump in a body: raw bytes (`application/octet-stream`).
pub struct Dump;

impl utoipa::PartialSchema for Dump {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Binary,
            )))
            .into()
    }
}

impl utoipa::ToSchema for Dump {}

/// The schema of a request id: what [`parse_id`] accepts.
pub fn request_id() -> RefOr<Schema> {
    id_schema(1, "A request id: a positive decimal integer.")
}

/// The schema of an `after` cursor: a request id, or 0 for the start.
pub fn any_id() -> RefOr<Schema> {
    id_schema(0, "A request id; 0 is before the first.")
}

/// The schema of a list's `next`: a request id, or `null` on the last page.
pub fn next_id() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
        .minimum(Some(1usize))
        .maximum(Some(u64::MAX as usize))
        .description(Some(
            "Pass as `after` for the next page; `null` on the last page.",
        ))
        .into()
}

fn id_schema(minimum: u64, description: &str) -> RefOr<Schema> {
    // Ids go up to 2^64 - 1: no `format: int64`, whose range stops at 2^63 - 1.
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Integer))
        .minimum(Some(minimum as usize))
        .maximum(Some(u64::MAX as usize))
        .description(Some(description))
        .into()
}
