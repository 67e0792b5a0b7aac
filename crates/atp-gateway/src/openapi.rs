//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations as the
//! router registers them (`utoipa_axum::routes!`), so a route cannot be served undocumented or
//! documented unserved. Served at `/api/v1/openapi.json`; `docs/openapi.json` is a copy a test
//! keeps equal.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType};
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
    /// With `POLICY_INVALID`: every error of the document, each at its JSON Pointer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<crate::problem::InvalidAt>>,
}

/// A JSON Schema carried into the document as it is: utoipa's schema model has no place for
/// some of what schemars writes (`oneOf` of `const`s, a `default` beside a `$ref`), so the
/// schema travels as the members of an otherwise empty object, which serializes to exactly
/// those members.
fn verbatim(schema: Value) -> RefOr<Schema> {
    let members = match schema {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::AnyValue)
            .extensions(Some(members.into_iter().collect()))
            .build(),
    ))
}

/// The schema of `T` as `atp-core` derives it with schemars, and every schema it refers to,
/// by name, with references pointing into `components/schemas`. One derivation, so the
/// policy's JSON Schema (`GET /policy/schema`) and the OpenAPI document cannot disagree.
fn from_schemars<T: schemars::JsonSchema>() -> (RefOr<Schema>, Vec<(String, RefOr<Schema>)>) {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let inline = generator.subschema_for::<T>();
    let mut definitions = generator.take_definitions(true);
    let own = definitions
        .remove(T::schema_name().as_ref())
        .unwrap_or_else(|| inline.to_value());
    let others = definitions
        .into_iter()
        .map(|(name, schema)| (name, verbatim(schema)))
        .collect();
    (verbatim(own), others)
}

/// Stands for an `atp-core` type (which derives schemars' `JsonSchema`, not utoipa's) in
/// `#[utoipa::path]` and `#[schema(value_type = ...)]`, under the type's own name.
macro_rules! schemars_type {
    ($(#[$doc:meta])* $marker:ident = $ty:ty) => {
        $(#[$doc])*
        pub struct $marker;

        impl utoipa::PartialSchema for $marker {
            fn schema() -> RefOr<Schema> {
                from_schemars::<$ty>().0
            }
        }

        impl ToSchema for $marker {
            fn name() -> Cow<'static, str> {
                <$ty as schemars::JsonSchema>::schema_name()
            }

            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                schemas.extend(from_schemars::<$ty>().1);
            }
        }
    };
}

schemars_type!(
    /// A tenant's policy document (`atp_core::policy::PolicyDocument`).
    PolicyDocumentSchema = atp_core::policy::PolicyDocument
);
schemars_type!(
    /// `public` · `internal` · `confidential` · `personal` · `sensitive`.
    ClassificationSchema = atp_core::policy::Classification
);
schemars_type!(
    /// A token role: `producer` · `auditor` · `admin` · `privacy`.
    PermissionSchema = atp_core::role::Permission
);

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

    /// The policy's schemas are schemars' own, byte for byte, with references into the
    /// document's components; and every reference in the document resolves.
    #[test]
    fn schemars_schemas_are_carried_verbatim_and_every_reference_resolves() {
        use utoipa::ToSchema as _;
        let (own, others) = super::from_schemars::<atp_core::policy::PolicyDocument>();
        let own = serde_json::to_value(own).unwrap();
        let published = atp_core::policy::schema();
        assert_eq!(
            own["properties"]["fields"]["description"],
            published["properties"]["fields"]["description"]
        );
        assert_eq!(own["additionalProperties"], false);
        assert_eq!(
            own["properties"]["defaultClassification"]["$ref"],
            "#/components/schemas/Classification"
        );
        assert!(own.get("$schema").is_none(), "{own}");
        let names: Vec<&str> = others.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"Classification"), "{names:?}");
        assert_eq!(
            super::PolicyDocumentSchema::name(),
            "PolicyDocument",
            "the component is named after the type"
        );
        // What schemars wrote for the classification, member for member.
        let defs = &published["$defs"]["Classification"];
        let (_, carried) = others.iter().find(|(n, _)| n == "Classification").unwrap();
        assert_eq!(&serde_json::to_value(carried).unwrap(), defs);

        let doc = serde_json::to_value(crate::openapi()).unwrap();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(
                schemas.contains_key(name),
                "{name} is referenced, not defined"
            );
        }
        for name in [
            "PolicyDocument",
            "Classification",
            "Permission",
            "Evaluation",
        ] {
            assert!(schemas.contains_key(name), "{name}");
        }
    }

    #[test]
    fn every_operation_is_secured_and_answers_problems_by_default() {
        let doc = serde_json::to_value(crate::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 29, "{:?}", paths.keys().collect::<Vec<_>>());
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["responses"]["default"].is_object(), "{method} {path}");
                // Public keys are public; webhooks authenticate by their signature.
                if path == "/ingest/webhooks/{source_id}" {
                    assert_eq!(op["security"], serde_json::json!([{}]), "{method} {path}");
                } else if path != "/integrity/keys" {
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
