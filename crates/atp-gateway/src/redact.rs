//! Redaction at read (CONTRACT §8): every record the gateway serves shows each value in clear,
//! as `{"redacted": "<classification>"}` or as `{"erased": true}`, by the caller's permissions
//! under the tenant's current policy and the classification the record's own policy version
//! gave the value.

use std::collections::BTreeMap;

use atp_core::policy::{Classification, PolicyDocument};
use atp_core::privacy;
use atp_store::query::StoredRecord;
use serde_json::Value;

use crate::Bus;
use crate::auth::Principal;
use crate::problem::Problem;

/// The classifications a caller reads in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clearance(pub Vec<Classification>);

impl Clearance {
    /// The caller's clearance under the tenant's current policy.
    pub async fn of(bus: &Bus, principal: &Principal) -> Result<Clearance, Problem> {
        Ok(Self::with_policy(bus, principal).await?.0)
    }

    /// [`Clearance::of`], and the policy it was read from.
    pub async fn with_policy(
        bus: &Bus,
        principal: &Principal,
    ) -> Result<(Clearance, std::sync::Arc<PolicyDocument>), Problem> {
        let policy = bus
            .policies
            .current(&principal.tenant)
            .await
            .map_err(|e| Problem::unavailable("the tenant's policy", e))?;
        Ok((Clearance(policy.readable(&principal.roles)), policy))
    }

    fn reads_everything(&self) -> bool {
        Classification::ALL.into_iter().all(|c| self.reads(c))
    }

    pub fn reads(&self, c: Classification) -> bool {
        self.0.contains(&c)
    }

    /// For the read model's filters ([`atp_store::query::Readable`]).
    pub fn indices(&self) -> atp_store::query::Readable {
        atp_store::query::readable(&self.0)
    }

    /// Reads every value stored in clear on the ledger (public, internal, confidential): the
    /// stored record bytes can then be served as they are.
    fn reads_every_clear_class(&self) -> bool {
        Classification::ALL
            .into_iter()
            .filter(|c| !c.is_encrypted())
            .all(|c| self.reads(c))
    }
}

fn classes(r: &StoredRecord) -> BTreeMap<&str, Classification> {
    r.field_classes
        .0
        .iter()
        .filter_map(|(p, c)| Some((p.as_str(), Classification::parse(c)?)))
        .collect()
}

/// Replaces, in `data`, every value the caller may not read by its redaction marker, leaving
/// erased markers and sealed values (ciphertext) as they are. True if anything was hidden.
fn redact(
    data: &mut Value,
    classes: &BTreeMap<&str, Classification>,
    clearance: &Clearance,
) -> bool {
    let mut hidden = Vec::new();
    privacy::walk(data, &mut Vec::new(), &mut |at, v| {
        let kept = *v == privacy::erased() || privacy::as_sealed(v).is_some();
        if kept {
            return true;
        }
        if v.is_object() || v.is_array() {
            return false;
        }
        let path = atp_core::policy::pointer(at);
        let class = classes
            .get(path.as_str())
            .copied()
            .unwrap_or(Classification::Internal);
        if !clearance.reads(class) {
            hidden.push((path, class));
        }
        true
    });
    let any = !hidden.is_empty();
    for (path, class) in hidden {
        privacy::replace(data, &path, privacy::redacted(class));
    }
    any
}

/// What a caller sees of one record: the event's data by its clearance, and the record bytes
/// (as stored, or with the values it may not read redacted, in which case they no longer hash
/// to the record's digest and `redacted` says so).
pub struct Shown {
    pub data: Value,
    /// `Some`: the record with values redacted, to serve instead of the stored bytes.
    pub record: Option<Value>,
}

pub fn show(r: &StoredRecord, clearance: &Clearance) -> Result<Shown, String> {
    let classes = classes(r);
    let needs_record = !clearance.reads_every_clear_class();
    let stored: Option<Value> = if r.data_view.is_none() || needs_record {
        Some(serde_json::from_slice(&r.record).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let stored_data = |stored: &Option<Value>| {
        stored
            .as_ref()
            .and_then(|rec| rec.get("event"))
            .and_then(Value::as_object)
            .and_then(privacy::data_of)
            .unwrap_or(Value::Null)
    };
    let mut data = match &r.data_view {
        Some(view) => view.0.clone(),
        // No value shown in clear: each sealed value (if any) reads erased.
        None => {
            let mut data = stored_data(&stored);
            for (path, _) in privacy::sealed_values(&data) {
                privacy::replace(&mut data, &path, privacy::erased());
            }
            data
        }
    };
    redact(&mut data, &classes, clearance);
    let mut shown = stored_data(&stored);
    let record = match (needs_record, stored) {
        (true, Some(mut rec)) => {
            if redact(&mut shown, &classes, clearance) {
                if let Some(Value::Object(event)) = rec.get_mut("event") {
                    event.remove("data_base64");
                    event.insert("data".to_owned(), shown);
                }
                Some(rec)
            } else {
                None
            }
        }
        _ => None,
    };
    Ok(Shown { data, record })
}

/// A refused submission as the caller may see it: ATP_REJECTED keeps it as received (no value
/// was sealed), so each value is classified under the tenant's current policy and redacted
/// where the caller may not read it. A submission that is not JSON (`eventEncoding` `base64`,
/// or a truncated prefix) cannot be classified: only a caller who reads every classification
/// sees it.
pub fn submission(
    event: Option<&Value>,
    encoding: Option<&Value>,
    source: &str,
    policy: &PolicyDocument,
    clearance: &Clearance,
) -> Option<Value> {
    let event = event?;
    if clearance.reads_everything() {
        return Some(event.clone());
    }
    let sealed_everything = || Some(privacy::redacted(Classification::Sensitive));
    if encoding.and_then(Value::as_str) != Some("json") {
        return sealed_everything();
    }
    let Some(obj) = event.as_object() else {
        return sealed_everything();
    };
    let Some(mut data) = privacy::data_of(obj) else {
        // No data to classify: the attributes alone (CloudEvents context) are shown.
        return Some(event.clone());
    };
    let event_type = obj.get("type").and_then(Value::as_str).unwrap_or_default();
    let classified = policy.classify(source, event_type, &data);
    for f in &classified.fields {
        if !clearance.reads(f.classification) {
            privacy::replace(&mut data, &f.path, privacy::redacted(f.classification));
        }
    }
    let mut shown = obj.clone();
    shown.remove("data_base64");
    shown.insert("data".to_owned(), data);
    Some(Value::Object(shown))
}
