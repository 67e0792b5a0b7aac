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
#[schema(as = Problem)]
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

schemars_type!(
    /// An event's `data`, as admission checks it (`atp_core::event::AuditData`).
    AuditDataSchema = atp_core::event::AuditData
);
schemars_type!(
    /// Who did it: `{id, type}`.
    ActorSchema = atp_core::event::Actor
);
schemars_type!(
    /// What it was done to: `{type, id}`.
    ResourceSchema = atp_core::event::Resource
);
schemars_type!(
    /// `success` or `failure`.
    OutcomeSchema = atp_core::event::Outcome
);

schemars_type!(
    /// A checkpoint signing key set (`atp_core::keys::Jwks`).
    JwksSchema = atp_core::keys::Jwks
);
schemars_type!(
    /// A legal hold (`atp_store::privacy::LegalHold`).
    LegalHoldSchema = atp_store::privacy::LegalHold
);
schemars_type!(
    /// A dead letter, where it is, and its last replay (`atp_nats::dlq::Entry`).
    DeadLetterEntrySchema = atp_nats::dlq::Entry
);
schemars_type!(
    /// One letter's replay (`atp_ops::dlq::Replayed`).
    ReplayedSchema = atp_ops::dlq::Replayed
);
schemars_type!(
    /// `queued` · `running` · `completed` · `failed`.
    ExportStatusSchema = atp_store::exports::ExportStatus
);
schemars_type!(
    /// What bundle verification found (`atp_bundle::verify::Report`).
    BundleReportSchema = atp_bundle::verify::Report
);
schemars_type!(
    /// One check of a bundle that failed (`atp_bundle::verify::Failure`).
    BundleFailureSchema = atp_bundle::verify::Failure
);

/// A JSON Schema document (draft 2020-12).
#[derive(Serialize, ToSchema)]
#[schema(as = JsonSchema)]
#[allow(dead_code)]
pub struct JsonSchemaDoc {
    #[serde(rename = "$schema")]
    schema: Option<String>,
    #[serde(rename = "$id")]
    id: Option<String>,
    title: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
}

/// A signed CloudEvent in structured mode (CONTRACT §2). Other extension attributes may be
/// present; those named in `signedextattrs` are covered by the signature.
#[derive(Serialize, ToSchema)]
#[schema(as = CloudEvent)]
#[allow(dead_code)]
pub struct CloudEventDoc {
    /// Always `1.0`.
    specversion: String,
    /// Unique per source, at most 128 characters.
    id: String,
    /// The URI-reference the source is registered with.
    source: String,
    /// E.g. `com.acme.order.updated`.
    #[serde(rename = "type")]
    ty: String,
    /// RFC 3339; becomes the record's `occurredAt`.
    time: String,
    /// `application/json`.
    datacontenttype: String,
    dataschema: Option<String>,
    subject: Option<String>,
    #[schema(value_type = AuditDataSchema)]
    data: (),
    /// Strictly increasing per source (a decimal string): exactly-once for ever.
    sequence: Option<String>,
    /// When present, the caller's tenant.
    tenantid: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    /// Base64 of the DSSE v1.0.2 envelope (CloudEvents verifiability, Ed25519).
    dssematerial: Option<String>,
    /// The producer key id registered for the tenant and source.
    keyid: Option<String>,
    /// Comma-separated extension attributes the signature covers.
    signedextattrs: Option<String>,
}

/// What `POST /audit/append` takes: a CloudEvent, or the short form.
pub struct AppendBody;

impl utoipa::PartialSchema for AppendBody {
    fn schema() -> RefOr<Schema> {
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name(CloudEventDoc::name()))
            .item(utoipa::openapi::Ref::from_schema_name(
                <crate::append::Simplified as ToSchema>::name(),
            ))
            .description(Some("A signed CloudEvent, or the short form"))
            .into()
    }
}

impl ToSchema for AppendBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("AppendBody")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((
            CloudEventDoc::name().into_owned(),
            <CloudEventDoc as utoipa::PartialSchema>::schema(),
        ));
        <CloudEventDoc as ToSchema>::schemas(schemas);
        schemas.push((
            <crate::append::Simplified as ToSchema>::name().into_owned(),
            <crate::append::Simplified as utoipa::PartialSchema>::schema(),
        ));
        <crate::append::Simplified as ToSchema>::schemas(schemas);
    }
}

/// The media type of a JSON Schema document.
const SCHEMA_JSON: &str = "application/schema+json";

/// The JSON Schema of an event's `data`, made once.
static AUDIT_DATA_SCHEMA: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(atp_core::event::data_schema);

/// `GET /schemas/audit-data`: the JSON Schema (2020-12) admission checks every event's `data`
/// against. Public, like the keys: a producer validates with it before sending.
#[utoipa::path(get, path = "/schemas/audit-data", tag = "audit", security(()),
    responses((status = 200, description = "The JSON Schema (2020-12) of an event's `data` (CONTRACT §2)",
        body = JsonSchemaDoc, content_type = "application/schema+json")))]
pub async fn audit_data_schema() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        [(axum::http::header::CONTENT_TYPE, SCHEMA_JSON)],
        axum::Json(AUDIT_DATA_SCHEMA.clone()),
    )
        .into_response()
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
                    ProblemDoc::name(),
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
    /// `atp openapi > docs/openapi.json` (or run this test with `ATP_BLESS_OPENAPI=1`) when the API
    /// changes.
    #[test]
    fn the_published_document_is_the_generated_one() {
        let generated = serde_json::to_value(crate::openapi()).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        if std::env::var_os("ATP_BLESS_OPENAPI").is_some() {
            let text = serde_json::to_string_pretty(&generated).unwrap();
            std::fs::write(path, text + "\n").unwrap();
        }
        let published: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(
            generated == published,
            "docs/openapi.json is stale: run `atp openapi > docs/openapi.json` \
             (or this test with ATP_BLESS_OPENAPI=1)"
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
        assert_eq!(paths.len(), 30, "{:?}", paths.keys().collect::<Vec<_>>());
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["responses"]["default"].is_object(), "{method} {path}");
                // Public keys are public; webhooks authenticate by their signature.
                if path == "/ingest/webhooks/{source_id}" {
                    assert_eq!(op["security"], serde_json::json!([{}]), "{method} {path}");
                } else if !["/integrity/keys", "/schemas/audit-data"].contains(&path.as_str()) {
                    assert_eq!(
                        op["security"][0]["bearer"],
                        serde_json::json!([]),
                        "{method} {path}"
                    );
                }
            }
        }
    }

    /// What a client generator needs: every request body and every answer with a body has a
    /// schema (a bare `{}` gives a generated client `any`), and every parameter says what it
    /// is.
    #[test]
    fn every_body_is_typed_and_every_parameter_described() {
        let doc = serde_json::to_value(crate::openapi()).unwrap();
        let untyped = |content: &serde_json::Value| {
            content
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| v["schema"].as_object().is_none_or(|s| s.is_empty()))
                .map(|(media, _)| media.clone())
                .collect::<Vec<_>>()
        };
        let mut faults = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for media in untyped(&op["requestBody"]["content"]) {
                    faults.push(format!("{method} {path}: request {media} has no schema"));
                }
                for (status, answer) in op["responses"].as_object().unwrap() {
                    for media in untyped(&answer["content"]) {
                        faults.push(format!("{method} {path}: {status} {media} has no schema"));
                    }
                }
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["description"].as_str().is_none_or(str::is_empty) {
                        faults.push(format!(
                            "{method} {path}: parameter {} undescribed",
                            p["name"]
                        ));
                    }
                }
            }
        }
        assert!(faults.is_empty(), "{faults:#?}");
    }

    /// Generated clients name a method after each operation's id.
    #[test]
    fn operation_ids_are_unique() {
        let doc = serde_json::to_value(crate::openapi()).unwrap();
        let mut ids = Vec::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                ids.push(op["operationId"].as_str().unwrap().to_owned());
            }
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
    }

    /// The `data` schema in the document is the one admission validates with and
    /// `/schemas/audit-data` serves.
    #[test]
    fn the_data_schema_is_the_one_admission_checks() {
        let doc = serde_json::to_value(crate::openapi()).unwrap();
        let carried = &doc["components"]["schemas"]["AuditData"];
        let served = atp_core::event::data_schema();
        assert_eq!(carried["required"], served["required"]);
        assert_eq!(carried["additionalProperties"], false);
        assert_eq!(
            carried["properties"]["actor"]["$ref"],
            "#/components/schemas/Actor"
        );
        assert_eq!(
            served["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        // Components are keyed by name: two types of one name would leave one of them
        // describing both.
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["Outcome"]["enum"],
            serde_json::json!(["success", "failure"])
        );
        assert!(schemas["ReplayOutcome"].is_object());
    }
}
