//! The producer side of CONTRACT §2: build and sign a structured-mode CloudEvent. ATP's CLI,
//! benchmarks and tests publish through this, so they exercise exactly what producers send.

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use serde_json::{Map, Value};

use crate::canonical::{self, CanonicalError};
use crate::dsse::{self, SignedFields};

/// Signs `event` (structured mode, JSON `data`) in place: sets `signedextattrs` to the extension
/// attributes present among `sequence` and `tenantid`, then `dssematerial`.
pub fn sign_structured(
    event: &mut Map<String, Value>,
    key: &SigningKey,
    key_id: &str,
) -> Result<(), CanonicalError> {
    let signed: Vec<&str> = crate::event::MUST_SIGN
        .into_iter()
        .filter(|n| event.contains_key(*n))
        .collect();
    if signed.is_empty() {
        event.remove("signedextattrs");
    } else {
        event.insert("signedextattrs".to_owned(), Value::String(signed.join(",")));
    }
    let data = match event.get("data") {
        Some(d) => canonical::to_canonical(d)?,
        None => Vec::new(),
    };
    let s = |n: &str| event.get(n).and_then(Value::as_str);
    let time = s("time")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let ext_values: Vec<(String, String)> = signed
        .iter()
        .map(|n| {
            let v = match event.get(*n) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            ((*n).to_owned(), v)
        })
        .collect();
    let material = dsse::verification_material(&SignedFields {
        id: s("id"),
        source: s("source"),
        specversion: s("specversion"),
        ty: s("type"),
        datacontenttype: s("datacontenttype"),
        dataschema: s("dataschema"),
        subject: s("subject"),
        time,
        data: &data,
        extensions: ext_values
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect(),
    });
    event.insert(
        "dssematerial".to_owned(),
        Value::String(dsse::sign(&material, key, key_id)),
    );
    Ok(())
}

/// A minimal valid audit event (unsigned), for examples and tests.
pub fn example_event(
    id: &str,
    source_uri: &str,
    time: DateTime<Utc>,
    actor: &str,
    action: &str,
) -> Map<String, Value> {
    let v = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": source_uri,
        "type": "com.example.audit",
        "time": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "datacontenttype": "application/json",
        "data": {
            "actor": {"id": actor, "type": "user"},
            "action": action,
            "resource": {"type": "Order", "id": "4711"},
            "outcome": "success",
            "attributes": {"ip": "192.0.2.1", "amount": 12.5}
        }
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// What an admin did, for ATP's own audit trail (ADR 0010).
#[derive(Debug, Clone)]
pub struct AdminAction<'a> {
    /// Who: `cli:<user>` for the CLI, `admin:<token subject>` for the gateway.
    pub actor: &'a str,
    /// `PRODUCER_REGISTERED`, `PRODUCER_KEY_REVOKED`, `SIGNING_KEY_ROTATED`, ...
    pub action: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    /// Flat details: strings, numbers, booleans.
    pub attributes: Map<String, Value>,
}

/// The CloudEvent of an admin action, on the system source (unsigned: its subject is writable
/// by ATP's admin identity only).
pub fn admin_event(id: &str, time: DateTime<Utc>, a: &AdminAction<'_>) -> Map<String, Value> {
    let v = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": crate::registry::SYSTEM_SOURCE_URI,
        "type": "dev.atp.admin.v1",
        "time": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "datacontenttype": "application/json",
        "data": {
            "actor": {"id": a.actor, "type": "operator"},
            "action": a.action,
            "resource": {"type": a.resource_type, "id": a.resource_id},
            "outcome": "success",
            "attributes": a.attributes,
        }
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
