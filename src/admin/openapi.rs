//! The OpenAPI 3.1 description of the HTTP API, generated (utoipa) from the contract's
//! types ([`crate::api`]) and the handlers' `#[utoipa::path]` attributes, and served at
//! `GET /openapi.json`. `docs/openapi.json` is a committed copy; `tests/openapi.rs` fails
//! when they differ and runs schemathesis against a live gateway with it.
//!
//! The status page's routes (`/`, `/login`, `/logout`) are left out on purpose: they are
//! HTML for a browser, behind a cookie session, not part of the integrators' contract.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::{access, files, requests, server_info, upload};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sftpgate",
        description = "The HTTP API of sftpgate, an SFTP gateway for database-upgrade services: the operator's `/v1` routes (bearer token), the customers' `request_sftp_access` call of the reference API, and the node's health, metrics and this spec. Every JSON body is the reference's envelope `{\"failures\": [...], ...}`; bad input is a 4xx with failures and changes nothing. The status page (`/`, `/login`, `/logout`) is HTML for browsers and not described here.",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        requests::list,
        requests::show,
        requests::put,
        requests::delete,
        requests::set_state,
        files::put_upgraded,
        files::get_original,
        server_info::get_server,
        access::request_sftp_access,
        upload::upload,
        super::healthz,
        super::metrics,
        serve_spec,
    ),
    modifiers(&BearerToken, &OptionalBodies, &CommonRefusals),
    tags(
        (name = "requests", description = "The operator's request records"),
        (name = "files", description = "The dumps: the customer's upload and the upgraded file"),
        (name = "customer", description = "The reference API's customer calls, authenticated by the request's own key"),
        (name = "node", description = "This node: health, metrics, host keys, this spec"),
    ),
)]
pub struct ApiDoc;

/// The admin token, as `Authorization: Bearer <token>`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "The admin token: `--admin-token-file` (default `data/admin.token`, generated on first start) or `SFTPGATE_ADMIN_TOKEN`.",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Bodies that may be left out: utoipa marks every typed body required. An empty upgraded
/// dump is stored as an empty file; `request_sftp_access` may have all its parameters in
/// the query string.
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            for op in [item.put.as_mut(), item.post.as_mut()]
                .into_iter()
                .flatten()
            {
                let optional = matches!(
                    op.operation_id.as_deref(),
                    Some("putUpgraded" | "requestSftpAccess")
                );
                if let (true, Some(utoipa::openapi::RefOr::T(body))) =
                    (optional, op.request_body.as_mut())
                {
                    body.required = Some(utoipa::openapi::Required::False);
                }
            }
        }
    }
}

/// The refusals that many routes share, added here rather than written on each: every
/// `/v1` route answers 401 without the token, every request route 503 when the store is
/// unreachable, and
/// every route of one request 400 for a malformed id and 404 for an unknown one (each
/// reason put first in a description the route already has).
struct CommonRefusals;

impl Modify for CommonRefusals {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let mut shared = Vec::new();
        for (path, item) in doc.paths.paths.iter_mut() {
            shared.clear();
            if path.starts_with("/v1/") {
                shared.push(("401", "`AUTH:MISSING`, `AUTH:INVALID`"));
            }
            if path.starts_with("/v1/requests") {
                shared.push(("503", "`STORAGE:UNAVAILABLE`"));
            }
            if path.contains("{id}") {
                shared.push(("400", "`REQUEST:INVALID_ID`"));
                shared.push(("404", "`REQUEST:NOT_FOUND`"));
            }
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                for (status, reasons) in &shared {
                    add_refusal(&mut op.responses.responses, status, reasons);
                }
            }
        }
    }
}

fn add_refusal(
    responses: &mut std::collections::BTreeMap<String, RefOr<Response>>,
    status: &str,
    reasons: &str,
) {
    match responses.get_mut(status) {
        Some(RefOr::T(r)) => r.description = format!("{reasons}, {}", r.description),
        Some(RefOr::Ref(_)) => {}
        None => {
            let refusal = Content::new(Some(Ref::from_schema_name("Refusal")));
            let response = ResponseBuilder::new()
                .description(reasons)
                .content("application/json", refusal)
                .build();
            responses.insert(status.to_string(), RefOr::T(response));
        }
    }
}

/// The spec as served and committed: pretty JSON with a final newline.
pub fn spec_json() -> &'static str {
    static SPEC: OnceLock<String> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut text = ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    })
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "node",
    summary = "This OpenAPI description",
    operation_id = "openapi",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", body = Object, content_type = "application/json"),
    ),
    security(()),
)]
pub(crate) async fn serve_spec() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], spec_json())
}
