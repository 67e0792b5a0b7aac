//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations as the
//! router registers them (`utoipa_axum::routes!`), so a route cannot be served undocumented or
//! documented unserved. Served at `/api/v1/openapi.json`; `docs/openapi.json` is a copy a test
//! keeps equal.

use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, RefOr, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};

/// Every error answer (RFC 9457 Problem+JSON).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ProblemDoc {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// A stable machine-readable code.
    pub code: crate::problem::ProblemCode,
    /// The request's W3C trace id.
    #[serde(rename = "traceId")]
    pub trace_id: String,
    #[serde(rename = "tenantId", skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ATP — Audit Trail Platform",
        description = "Append, query, prove, export and verify tamper-evident audit records. \
                       Tenant and roles come from the bearer token only.",
    ),
    servers((url = "/api/v1")),
    components(schemas(ProblemDoc)),
)]
pub struct ApiDoc;

/// What every operation shares, applied once the routes are in: bearer tokens (unless the
/// operation says it is public), and Problem+JSON for any status it does not list.
pub(crate) fn conventions(doc: &mut utoipa::openapi::OpenApi) {
    {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        let problem = ResponseBuilder::new()
            .description("Problem+JSON (RFC 9457) with `code`, `traceId` and `tenantId`")
            .content(
                crate::problem::PROBLEM_JSON,
                Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ProblemDoc",
                )))),
            )
            .build();
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .entry("default".to_owned())
                    .or_insert_with(|| RefOr::T(problem.clone()));
                if op.security.is_none() {
                    op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
                        "bearer",
                        Vec::<String>::new(),
                    )]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// `docs/openapi.json` is the document the code generates: regenerate it with
    /// `atp openapi > docs/openapi.json` when a route changes.
    #[test]
    fn the_published_document_is_the_generated_one() {
        let generated = serde_json::to_value(crate::openapi()).unwrap();
        let published: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
        assert!(
            generated == published,
            "docs/openapi.json is stale: run `atp openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn every_operation_is_secured_and_answers_problems_by_default() {
        let doc = serde_json::to_value(crate::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 20, "{:?}", paths.keys().collect::<Vec<_>>());
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["responses"]["default"].is_object(), "{method} {path}");
                if path != "/integrity/keys" {
                    assert_eq!(
                        op["security"][0]["bearer"],
                        serde_json::json!([]),
                        "{method} {path}"
                    );
                }
            }
        }
    }
}
