//! `/policy`: the tenant's privacy policy (CONTRACT §8) — read it, replace it, ask what it
//! decides for an event, and fetch its JSON Schema. The tenant is always the caller's: no
//! route names one.
//!
//! A change is stored first (compare-and-set in ATP_POLICIES: two changes never take one
//! version), then announced on `atp.policy.changed.<tenant>`, then recorded on the tenant's
//! admin trail. Ingest does not wait for the announcement: it re-reads the policy within
//! [`atp_nats::policy::CURRENT_TTL`], and every record names the version that decided it.

use std::sync::LazyLock;

use atp_core::policy::{self as core_policy, Classification, PolicyDocument};
use atp_core::producer::AdminAction;
use atp_core::{SourceId, TenantId};
use atp_nats::admin_trail;
use atp_nats::policy::{self as store, PolicyStoreError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Bus;
use crate::auth::{Permission, Principal};
use crate::openapi::{ClassificationSchema, PermissionSchema, PolicyDocumentSchema};
use crate::problem::{InvalidAt, Problem, ProblemCode};

/// Who reads the policy: its administrators and the data-protection officer.
const POLICY_READERS: [Permission; 2] = [Permission::Admin, Permission::Privacy];
/// Who may ask what the policy decides: those, and auditors (who read what it decides).
const EVALUATORS: [Permission; 3] = [Permission::Admin, Permission::Privacy, Permission::Auditor];
/// The most values an event to evaluate may hold. Classifying costs values × rules (up to
/// [`core_policy::MAX_RULES`]): 10,000 × 1,000 rule matches is well under a second on a
/// blocking thread, and a 64 KiB event (the default event limit) of realistic members (≥ 6
/// bytes each, `"k":1,`) holds fewer than 11,000 values.
pub const MAX_EVALUATED_VALUES: usize = 10_000;

/// The admin-trail action of a policy change (CONTRACT §8).
const POLICY_CHANGED: &str = "POLICY_CHANGED";

fn store_problem(tenant: &TenantId) -> impl Fn(PolicyStoreError) -> Problem + '_ {
    move |e| {
        match e {
            PolicyStoreError::Conflict(now) => Problem::new(
                ProblemCode::PolicyConflict,
                format!(
                    "another change was stored meanwhile (the policy is now version {now}); \
                     read it again and send your change on top of it"
                ),
            ),
            PolicyStoreError::Corrupt { key, reason } => {
                tracing::error!(tenant = %tenant, key = %key, reason = %reason, "a stored policy does not decode");
                Problem::new(
                    ProblemCode::DataCorrupt,
                    "the tenant's stored policy does not decode; it was logged for ATP's operators",
                )
            }
            other => Problem::unavailable("the policy store", other),
        }
        .tenant(tenant.as_str())
    }
}

/// `GET /policy`: the tenant's policy as ingest applies it now (the built-in default, version
/// 1, until the tenant changes it).
#[utoipa::path(get, path = "/policy", tag = "policy",
    responses((status = 200, description = "The tenant's current policy document, with its `policyVersion`", body = PolicyDocumentSchema, content_type = "application/json")))]
pub async fn get_policy(
    principal: Principal,
    State(bus): State<Bus>,
) -> Result<Json<PolicyDocument>, Problem> {
    principal.require(&POLICY_READERS)?;
    let (doc, _) = store::current(bus.policies.store(), &principal.tenant)
        .await
        .map_err(store_problem(&principal.tenant))?;
    Ok(Json(doc))
}

fn json_content(headers: &HeaderMap) -> Result<(), Problem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.split(';').next().unwrap_or("").trim() == "application/json" {
        Ok(())
    } else {
        Err(Problem::new(
            ProblemCode::UnsupportedMediaType,
            format!("content-type {ct:?} is not accepted here: send application/json"),
        ))
    }
}

/// The top-level members in which two policies differ (`policyVersion` aside), as the admin
/// trail records them.
fn changed_members(before: &PolicyDocument, after: &PolicyDocument) -> Vec<String> {
    let (Ok(Value::Object(before)), Ok(Value::Object(after))) =
        (serde_json::to_value(before), serde_json::to_value(after))
    else {
        return Vec::new();
    };
    after
        .iter()
        .filter(|(k, v)| k.as_str() != "policyVersion" && before.get(k.as_str()) != Some(v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// `sha256:<hex>` of the RFC 8785 bytes of `doc` as `GET /policy` answers it, so anyone can
/// match the admin trail's entry to the document.
fn document_digest(doc: &PolicyDocument) -> Option<String> {
    let value = serde_json::to_value(doc).ok()?;
    let bytes = atp_core::canonical::to_canonical(&value).ok()?;
    Some(atp_core::Digest::of(&bytes).to_string())
}

/// `PUT /policy`: replaces the tenant's policy with the body, as the next version. Every error
/// of the document is answered at once (400 `POLICY_INVALID`, `errors` naming each path);
/// `policyVersion` in the body is ignored.
#[utoipa::path(put, path = "/policy", tag = "policy",
    request_body(content = PolicyDocumentSchema, content_type = "application/json"),
    responses((status = 200, description = "The stored document, with its new `policyVersion`", body = PolicyDocumentSchema, content_type = "application/json")))]
pub async fn put_policy(
    principal: Principal,
    State(bus): State<Bus>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PolicyDocument>, Problem> {
    principal.require(&[Permission::Admin])?;
    let tenant = &principal.tenant;
    json_content(&headers).map_err(|p| p.tenant(tenant.as_str()))?;
    let doc = core_policy::parse(&body).map_err(|errors| {
        let first = errors.first().map(ToString::to_string).unwrap_or_default();
        Problem::new(
            ProblemCode::PolicyInvalid,
            format!(
                "the policy document has {} error(s), each in `errors`; the first: {first}",
                errors.len()
            ),
        )
        .errors(
            errors
                .into_iter()
                .map(|e| InvalidAt {
                    path: e.path,
                    message: e.message,
                })
                .collect(),
        )
        .tenant(tenant.as_str())
    })?;
    // The change must go on the tenant's admin trail, whose source comes with the tenant's
    // first producer (`atp producer add`); the gateway may not register it. Checked before
    // storing, so a change is never made that could not be recorded.
    let trail = admin_trail::partition(tenant)
        .map_err(|e| Problem::unavailable("the admin trail", e).tenant(tenant.as_str()))?;
    let registered =
        bus.registry.lookup(&trail).await.map_err(|e| {
            Problem::unavailable("the producer registry", e).tenant(tenant.as_str())
        })?;
    if registered.is_none() {
        return Err(Problem::new(
            ProblemCode::UnknownSource,
            format!(
                "tenant {tenant} has no registered source yet, so no admin trail to record the \
                 change on; register its first producer (`atp producer add`), then retry"
            ),
        )
        .tenant(tenant.as_str()));
    }

    let stored = store::replace(bus.policies.store(), tenant, doc)
        .await
        .map_err(store_problem(tenant))?;
    let version = stored.policy_version;
    // From here the new version is in force (ingest reads it within CURRENT_TTL). If we crash
    // before the admin trail has the change, the version is still kept for ever in
    // ATP_POLICIES (`<tenant>.v<N>`), and the next change's entry names it as its previous
    // version: the gap is visible, never silent.
    let previous = match store::version(bus.policies.store(), tenant, version.saturating_sub(1))
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(tenant = %tenant, error = %e, "the previous policy version could not be read");
            None
        }
    };
    if let Err(e) = store::announce(&bus.js.client(), tenant, version).await {
        // Only a hint: whoever caches the policy re-reads it within CURRENT_TTL anyway.
        tracing::warn!(tenant = %tenant, policy_version = version, error = %e, "the policy change was not announced");
    }
    let mut attributes = Map::new();
    attributes.insert("policyVersion".into(), version.into());
    attributes.insert("previousVersion".into(), version.saturating_sub(1).into());
    if let Some(before) = &previous {
        attributes.insert(
            "changed".into(),
            changed_members(before, &stored).join(",").into(),
        );
    }
    if let Some(digest) = document_digest(&stored) {
        attributes.insert("documentSha256".into(), digest.into());
    }
    let actor = format!("admin:{}", principal.subject);
    let action = AdminAction {
        actor: &actor,
        action: POLICY_CHANGED,
        resource_type: "policy",
        resource_id: tenant.as_str(),
        attributes,
    };
    if let Err(e) = admin_trail::record(&bus.js, tenant, &action).await {
        // A change in force that is not on the trail: someone must look (and the next change
        // will show the gap, see above).
        tracing::error!(tenant = %tenant, policy_version = version, error = %e, "a policy change is stored but not on the admin trail");
        return Err(Problem::new(
            ProblemCode::Unavailable,
            format!(
                "policy version {version} is stored and in force, but its admin-trail entry \
                 could not be written; it was logged for ATP's operators"
            ),
        )
        .tenant(tenant.as_str()));
    }
    tracing::info!(tenant = %tenant, policy_version = version, by = %actor, "policy changed");
    Ok(Json(stored))
}

/// The event to evaluate: a CloudEvent in structured mode, or just its `type`, `data` and
/// optionally `source`. Other members (`id`, `time`, a signature...) are ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EvaluatedEvent {
    /// The CloudEvents `source` URI: which registered source the event is from, when the
    /// request has no `sourceId`.
    #[serde(default)]
    source: Option<String>,
    /// The CloudEvents `type`: retention may be decided by it.
    #[serde(rename = "type")]
    event_type: String,
    /// The audit payload (CONTRACT §2).
    #[schema(value_type = Object)]
    data: Map<String, Value>,
}

/// `POST /policy/evaluate`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EvaluateRequest {
    event: EvaluatedEvent,
    /// The source whose refinements apply; without it, the tenant's source registered for
    /// `event.source`, else none (the tenant's rules alone).
    #[serde(default)]
    source_id: Option<String>,
    /// Whose view to show; without it, the caller's own roles.
    #[serde(default)]
    #[schema(value_type = Option<PermissionSchema>)]
    role: Option<Permission>,
}

/// What a reader sees of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldView {
    /// The value as stored in clear, or decrypted for this reader.
    Clear,
    /// `{"redacted": "<classification>"}` in place of the value.
    Redacted,
}

/// The policy's decision for one value of `data`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldDecision {
    /// JSON Pointer into `data`.
    path: String,
    #[schema(value_type = ClassificationSchema)]
    classification: Classification,
    retention_policy_id: String,
    /// Sealed with the data subject's key before the record is hashed (`personal`, `sensitive`).
    encrypted: bool,
    view: FieldView,
}

/// Where the data subject's id is looked for. The id itself is never echoed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectDecision {
    /// JSON Pointer into `data`.
    pointer: String,
    /// Whether a non-empty string is there.
    found: bool,
}

/// `POST /policy/evaluate`'s answer: paths and decisions only, never a value of the event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    /// The version that decided: the tenant's current one.
    policy_version: u32,
    /// The source whose refinements applied (`null`: the tenant's rules alone).
    source_id: Option<String>,
    /// Whose view `fields` shows: the requested role, or the caller's roles.
    #[schema(value_type = Vec<PermissionSchema>)]
    roles: Vec<Permission>,
    /// The classifications that view reads in clear.
    #[schema(value_type = Vec<ClassificationSchema>)]
    readable: Vec<Classification>,
    /// The record's classification: the highest of its values'.
    #[schema(value_type = ClassificationSchema)]
    classification: Classification,
    /// The record's retention policy.
    retention_policy_id: String,
    subject: SubjectDecision,
    /// Every value of `data`, in document order.
    fields: Vec<FieldDecision>,
}

/// How many values (leaves) `v` holds, counting no further than `cap + 1`.
fn values_in(v: &Value, cap: usize) -> usize {
    let mut count = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => stack.extend(m.values()),
            Value::Array(a) => stack.extend(a.iter()),
            _ => count += 1,
        }
        if count > cap {
            break;
        }
    }
    count
}

/// What `doc` decides for `data`, shown as `roles` would see it.
fn evaluate(
    doc: &PolicyDocument,
    source_id: Option<String>,
    roles: Vec<Permission>,
    event_type: &str,
    data: &Value,
) -> Evaluation {
    let source = source_id.as_deref().unwrap_or("");
    let decided = doc.classify(source, event_type, data);
    let subject = SubjectDecision {
        pointer: doc.subject_pointer(source).to_owned(),
        found: decided.subject.is_some(),
    };
    let readable = doc.readable(&roles);
    let fields = decided
        .fields
        .into_iter()
        .map(|f| FieldDecision {
            view: if readable.contains(&f.classification) {
                FieldView::Clear
            } else {
                FieldView::Redacted
            },
            encrypted: f.classification.is_encrypted(),
            path: f.path,
            classification: f.classification,
            retention_policy_id: f.retention_policy_id,
        })
        .collect();
    Evaluation {
        policy_version: decided.policy_version,
        source_id,
        roles,
        readable,
        classification: decided.classification,
        retention_policy_id: decided.retention_policy_id,
        subject,
        fields,
    }
}

/// `POST /policy/evaluate`: what the tenant's current policy decides for an event — each
/// value's classification, retention and whether it is sealed, the record's classification and
/// retention, where the data subject is — and what a role would see of each value.
#[utoipa::path(post, path = "/policy/evaluate", tag = "policy", request_body = EvaluateRequest,
    responses((status = 200, description = "The policy's decisions, as the role would see them", body = Evaluation, content_type = "application/json")))]
pub async fn evaluate_event(
    principal: Principal,
    State(bus): State<Bus>,
    body: Result<Json<EvaluateRequest>, JsonRejection>,
) -> Result<Json<Evaluation>, Problem> {
    principal.require(&EVALUATORS)?;
    let tenant = &principal.tenant;
    let bad =
        |detail: String| Problem::new(ProblemCode::InvalidRequest, detail).tenant(tenant.as_str());
    let Json(request) = body.map_err(|e| {
        let code = if e.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            ProblemCode::UnsupportedMediaType
        } else {
            ProblemCode::InvalidRequest
        };
        Problem::new(code, e.body_text()).tenant(tenant.as_str())
    })?;
    let data = Value::Object(request.event.data);
    if values_in(&data, MAX_EVALUATED_VALUES) > MAX_EVALUATED_VALUES {
        return Err(Problem::new(
            ProblemCode::TooLarge,
            format!("an event to evaluate holds at most {MAX_EVALUATED_VALUES} values"),
        )
        .tenant(tenant.as_str()));
    }
    let source_id = match (request.source_id, request.event.source) {
        (Some(id), _) => Some(
            SourceId::new(&id)
                .map_err(|e| bad(format!("sourceId {id:?}: {e}")))?
                .to_string(),
        ),
        (None, Some(uri)) => {
            let found = bus.registry.find_by_uri(tenant, &uri).await.map_err(|e| {
                Problem::unavailable("the producer registry", e).tenant(tenant.as_str())
            })?;
            let Some(reg) = found else {
                return Err(bad(format!(
                    "no source of tenant {tenant} is registered with source URI {uri:?}; name \
                     the source with sourceId"
                )));
            };
            Some(reg.source_id.to_string())
        }
        (None, None) => None,
    };
    let roles = match request.role {
        Some(role) => vec![role],
        None => principal.roles.clone(),
    };
    let (doc, _) = store::current(bus.policies.store(), tenant)
        .await
        .map_err(store_problem(tenant))?;
    let event_type = request.event.event_type;
    // Values × rules of matching: off the async threads.
    let answer =
        tokio::task::spawn_blocking(move || evaluate(&doc, source_id, roles, &event_type, &data))
            .await
            .map_err(|e| Problem::unavailable("evaluation", e).tenant(tenant.as_str()))?;
    Ok(Json(answer))
}

/// The JSON Schema of a policy document, made once.
static SCHEMA: LazyLock<Value> = LazyLock::new(core_policy::schema);

/// `GET /policy/schema`: the JSON Schema (2020-12) of a policy document, for editors and
/// client generators. Any authenticated caller.
#[utoipa::path(get, path = "/policy/schema", tag = "policy",
    responses((status = 200, description = "The JSON Schema (2020-12) of a policy document", body = crate::openapi::JsonSchemaDoc, content_type = "application/json")))]
pub async fn policy_schema(_principal: Principal) -> Json<Value> {
    Json(SCHEMA.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> PolicyDocument {
        core_policy::parse(
            br#"{
                "fields": [
                    {"path": "/actor/id", "classification": "personal"},
                    {"path": "/attributes/diagnosis", "classification": "sensitive"},
                    {"path": "/action", "classification": "public"}
                ],
                "sources": {"hr": {"subject": "/resource/id"}}
            }"#,
        )
        .unwrap()
    }

    fn data() -> Value {
        json!({
            "actor": {"id": "u-1", "type": "user"},
            "action": "READ",
            "resource": {"type": "chart", "id": "c-9"},
            "attributes": {"diagnosis": "flu"}
        })
    }

    fn view(e: &Evaluation, path: &str) -> (Classification, bool, FieldView) {
        let f = e.fields.iter().find(|f| f.path == path).unwrap();
        (f.classification, f.encrypted, f.view)
    }

    #[test]
    fn each_value_is_shown_as_the_role_would_see_it_and_no_value_is_echoed() {
        use Classification::*;
        use FieldView::*;
        let doc = policy();
        let auditor = evaluate(&doc, None, vec![Permission::Auditor], "t", &data());
        assert_eq!(view(&auditor, "/actor/id"), (Personal, true, Redacted));
        assert_eq!(
            view(&auditor, "/attributes/diagnosis"),
            (Sensitive, true, Redacted)
        );
        assert_eq!(view(&auditor, "/action"), (Public, false, Clear));
        assert_eq!(view(&auditor, "/resource/id"), (Internal, false, Clear));
        assert_eq!(auditor.classification, Sensitive);
        assert_eq!(auditor.subject.pointer, "/actor/id");
        assert!(auditor.subject.found);
        let privacy = evaluate(&doc, None, vec![Permission::Privacy], "t", &data());
        assert!(privacy.fields.iter().all(|f| f.view == Clear));

        // A source's refinement moves the subject; one not found is said so.
        let hr = evaluate(
            &doc,
            Some("hr".into()),
            vec![Permission::Admin],
            "t",
            &json!({}),
        );
        assert_eq!(hr.subject.pointer, "/resource/id");
        assert!(!hr.subject.found);

        let text = serde_json::to_string(&auditor).unwrap();
        for value in ["u-1", "flu", "READ", "c-9", "chart"] {
            assert!(!text.contains(value), "{value} echoed: {text}");
        }
    }

    #[test]
    fn the_trail_names_the_members_a_change_touched() {
        let before = PolicyDocument::default();
        let mut after = policy();
        after.policy_version = 2;
        assert_eq!(changed_members(&before, &after), vec!["fields", "sources"]);
        let mut same = before.clone();
        same.policy_version = 7;
        assert!(changed_members(&before, &same).is_empty());
        assert!(document_digest(&after).unwrap().starts_with("sha256:"));
    }

    #[test]
    fn values_are_counted_up_to_the_cap() {
        assert_eq!(values_in(&data(), 100), 6);
        assert_eq!(values_in(&json!({}), 100), 0);
        let many = Value::Array(vec![json!(1); 50]);
        assert_eq!(values_in(&many, 10), 11);
    }
}
