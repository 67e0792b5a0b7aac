//! Stream and bucket definitions from `streams/`, applied idempotently, with drift detection.
//!
//! The files are embedded at build time so a binary always carries the definitions it was
//! tested with. Drift is judged field by field on exactly the fields a file sets: the server's
//! answer for each must equal the file's value. An old server that ignores a setting shows up
//! here as drift, which is the point.

use async_nats::jetstream::{self, Context, stream};
use serde::Deserialize;
use serde_json::Value;

pub const STREAM_FILES: [(&str, &str); 7] = [
    (
        "ATP_INGRESS",
        include_str!("../../../streams/ATP_INGRESS.json"),
    ),
    (
        "ATP_LEDGER",
        include_str!("../../../streams/ATP_LEDGER.json"),
    ),
    (
        "ATP_REJECTED",
        include_str!("../../../streams/ATP_REJECTED.json"),
    ),
    (
        "ATP_CHECKPOINTS",
        include_str!("../../../streams/ATP_CHECKPOINTS.json"),
    ),
    (
        "ATP_EXPORTS",
        include_str!("../../../streams/ATP_EXPORTS.json"),
    ),
    (
        "ATP_ALERTS",
        include_str!("../../../streams/ATP_ALERTS.json"),
    ),
    ("ATP_DLQ", include_str!("../../../streams/ATP_DLQ.json")),
];
const KV_FILE: &str = include_str!("../../../streams/kv.json");

pub const INGRESS: &str = "ATP_INGRESS";
pub const LEDGER: &str = "ATP_LEDGER";
pub const REJECTED: &str = "ATP_REJECTED";
pub const PRODUCERS_BUCKET: &str = "ATP_PRODUCERS";
pub const INGEST_BUCKET: &str = "ATP_INGEST";
pub const CHECKPOINTS: &str = "ATP_CHECKPOINTS";
pub const ALERTS: &str = "ATP_ALERTS";
pub const SIGNING_KEYS_BUCKET: &str = "ATP_SIGNING_KEYS";
pub const EXPORT_WEBHOOKS_BUCKET: &str = "ATP_EXPORT_WEBHOOKS";
pub const EXPORT_BUNDLES: &str = "ATP_EXPORT_BUNDLES";
pub const EXPORTS: &str = "ATP_EXPORTS";
pub const DLQ: &str = "ATP_DLQ";
pub const DLQ_REPLAYS_BUCKET: &str = "ATP_DLQ_REPLAYS";
pub const POLICIES_BUCKET: &str = "ATP_POLICIES";
pub const SUBJECT_KEYS_BUCKET: &str = "ATP_SUBJECT_KEYS";

#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    #[error("stream definition {name} is invalid: {reason}")]
    Definition { name: String, reason: String },
    #[error("stream {0} is missing: run `atp streams apply`")]
    Missing(String),
    #[error(
        "stream {name} has drifted ({fields}): run `atp streams apply` (fields that cannot change need a migration, see ops/runbooks/streams.md)"
    )]
    Drifted { name: String, fields: String },
    #[error("JetStream request failed for {name}: {reason}")]
    Request { name: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated(Vec<String>),
    Unchanged,
}

#[derive(Debug, Clone, Deserialize)]
struct KvFile {
    buckets: Vec<KvDef>,
    #[serde(default)]
    object_stores: Vec<ObjectStoreDef>,
}

#[derive(Debug, Clone, Deserialize)]
struct ObjectStoreDef {
    bucket: String,
    description: String,
    max_age_days: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct KvDef {
    bucket: String,
    description: String,
    history: i64,
}

/// A stream definition: the typed config and the raw JSON whose fields drift is judged on.
#[derive(Debug, Clone)]
pub struct StreamDef {
    pub name: String,
    pub config: stream::Config,
    wanted: serde_json::Map<String, Value>,
}

pub fn definitions(replicas: usize) -> Result<Vec<StreamDef>, StreamsError> {
    STREAM_FILES
        .iter()
        .map(|(name, text)| {
            let bad = |reason: String| StreamsError::Definition {
                name: (*name).to_owned(),
                reason,
            };
            let Value::Object(mut wanted) =
                serde_json::from_str::<Value>(text).map_err(|e| bad(e.to_string()))?
            else {
                return Err(bad("not a JSON object".to_owned()));
            };
            wanted.insert("num_replicas".to_owned(), Value::from(replicas));
            let config: stream::Config = serde_json::from_value(Value::Object(wanted.clone()))
                .map_err(|e| bad(e.to_string()))?;
            if config.name != *name {
                return Err(bad(format!("file says its name is {}", config.name)));
            }
            // Descriptions are documentation, not behaviour.
            wanted.remove("description");
            Ok(StreamDef {
                name: (*name).to_owned(),
                config,
                wanted,
            })
        })
        .collect()
}

/// Fields an operator may set to another value than the file's, as long as it is a bound
/// (not zero): how long refused submissions' clear copies are kept is a deployment's privacy
/// choice (docs/privacy.md), and the file's value is the default.
const TUNABLE: [(&str, &str); 1] = [(REJECTED, "max_age")];

fn tunable(stream: &str, field: &str) -> bool {
    TUNABLE.contains(&(stream, field))
}

/// Fields whose value on the server differs from the definition.
fn drift(def: &StreamDef, actual: &stream::Config) -> Vec<String> {
    let actual = serde_json::to_value(actual).unwrap_or(Value::Null);
    def.wanted
        .iter()
        .filter(|(k, v)| {
            let a = actual.get(k.as_str()).unwrap_or(&Value::Null);
            if tunable(&def.name, k) && a.as_i64().is_some_and(|n| n > 0) {
                return false;
            }
            // The server omits false booleans and zero limits.
            let default_equal =
                a.is_null() && (v.as_bool() == Some(false) || v.as_i64() == Some(0));
            a != *v && !default_equal
        })
        .map(|(k, v)| {
            format!(
                "{k}: want {v}, server has {}",
                actual.get(k.as_str()).unwrap_or(&Value::Null)
            )
        })
        .collect()
}

/// Creates or updates every stream and bucket. Idempotent.
pub async fn apply(js: &Context, replicas: usize) -> Result<Vec<(String, Applied)>, StreamsError> {
    let mut out = Vec::new();
    for def in definitions(replicas)? {
        let req = |reason: String| StreamsError::Request {
            name: def.name.clone(),
            reason,
        };
        let applied = match js.get_stream(&def.name).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| req(e.to_string()))?;
                let fields = drift(&def, &info.config);
                if fields.is_empty() {
                    Applied::Unchanged
                } else {
                    // An operator's bound on a tunable field is kept.
                    let mut config = def.config.clone();
                    if tunable(&def.name, "max_age") && !info.config.max_age.is_zero() {
                        config.max_age = info.config.max_age;
                        config.duplicate_window = info.config.duplicate_window;
                    }
                    js.update_stream(config)
                        .await
                        .map_err(|e| req(e.to_string()))?;
                    Applied::Updated(fields)
                }
            }
            Err(e) if is_not_found(&e.kind()) => {
                js.create_stream(def.config.clone())
                    .await
                    .map_err(|e| req(e.to_string()))?;
                Applied::Created
            }
            Err(e) => return Err(req(e.to_string())),
        };
        out.push((def.name.clone(), applied));
    }
    let kv: KvFile = serde_json::from_str(KV_FILE).map_err(|e| StreamsError::Definition {
        name: "kv.json".to_owned(),
        reason: e.to_string(),
    })?;
    for b in kv.buckets {
        let exists = js.get_key_value(&b.bucket).await.is_ok();
        if !exists {
            js.create_key_value(jetstream::kv::Config {
                bucket: b.bucket.clone(),
                description: b.description.clone(),
                history: b.history,
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| StreamsError::Request {
                name: b.bucket.clone(),
                reason: e.to_string(),
            })?;
        }
        out.push((
            format!("KV {}", b.bucket),
            if exists {
                Applied::Unchanged
            } else {
                Applied::Created
            },
        ));
    }
    for o in kv.object_stores {
        let exists = js.get_object_store(&o.bucket).await.is_ok();
        if !exists {
            js.create_object_store(jetstream::object_store::Config {
                bucket: o.bucket.clone(),
                description: Some(o.description.clone()),
                max_age: std::time::Duration::from_secs(o.max_age_days * 86_400),
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| StreamsError::Request {
                name: o.bucket.clone(),
                reason: e.to_string(),
            })?;
        }
        out.push((
            format!("Object store {}", o.bucket),
            if exists {
                Applied::Unchanged
            } else {
                Applied::Created
            },
        ));
    }
    Ok(out)
}

/// Whether a `get_stream` failure means the stream does not exist (as opposed to the server
/// not answering, as while a cluster elects a new leader).
pub fn is_not_found(kind: &jetstream::context::GetStreamErrorKind) -> bool {
    matches!(kind, jetstream::context::GetStreamErrorKind::JetStream(e) if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// What services run at start-up: every stream and bucket present and not drifted.
pub async fn check(js: &Context) -> Result<(), StreamsError> {
    let replicas_of = |c: &stream::Config| c.num_replicas.max(1);
    for def in definitions(1)? {
        let mut s = js
            .get_stream(&def.name)
            .await
            .map_err(|_| StreamsError::Missing(def.name.clone()))?;
        let info = s.info().await.map_err(|e| StreamsError::Request {
            name: def.name.clone(),
            reason: e.to_string(),
        })?;
        // Replica count is a deployment choice (1 on a laptop, 3 in a cluster), not drift.
        let mut def = def;
        def.wanted.insert(
            "num_replicas".to_owned(),
            Value::from(replicas_of(&info.config)),
        );
        let fields = drift(&def, &info.config);
        if !fields.is_empty() {
            return Err(StreamsError::Drifted {
                name: def.name,
                fields: fields.join("; "),
            });
        }
    }
    let kv: KvFile = serde_json::from_str(KV_FILE).map_err(|e| StreamsError::Definition {
        name: "kv.json".to_owned(),
        reason: e.to_string(),
    })?;
    for b in kv.buckets {
        js.get_key_value(&b.bucket)
            .await
            .map_err(|_| StreamsError::Missing(format!("KV {}", b.bucket)))?;
    }
    for o in kv.object_stores {
        js.get_object_store(&o.bucket)
            .await
            .map_err(|_| StreamsError::Missing(format!("object store {}", o.bucket)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_parses_and_protects_the_record() {
        let defs = definitions(1).unwrap();
        assert_eq!(defs.len(), STREAM_FILES.len());
        for name in [LEDGER, REJECTED] {
            let d = defs.iter().find(|d| d.name == name).unwrap();
            assert!(
                d.config.deny_delete && d.config.deny_purge,
                "{name} must be append-only"
            );
            assert!(d.config.allow_atomic_publish, "{name} takes atomic batches");
            assert!(
                d.config.allow_direct,
                "{name} tails are read with direct get"
            );
        }
        let max_age = |name: &str| {
            defs.iter()
                .find(|d| d.name == name)
                .map(|d| d.config.max_age)
        };
        assert_eq!(
            max_age(LEDGER),
            Some(std::time::Duration::ZERO),
            "the ledger keeps records for ever"
        );
        // Refused submissions are kept as received, clear values and all: a bound, so an
        // erasure reaches them (docs/privacy.md).
        assert_eq!(
            max_age(REJECTED),
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
    }

    #[test]
    fn a_tunable_bound_is_not_drift_but_no_bound_is() {
        let def = definitions(1)
            .unwrap()
            .into_iter()
            .find(|d| d.name == REJECTED)
            .unwrap();
        let mut actual = def.config.clone();
        actual.max_age = std::time::Duration::from_secs(3_600);
        assert!(drift(&def, &actual).is_empty());
        actual.max_age = std::time::Duration::ZERO;
        assert_eq!(drift(&def, &actual).len(), 1);
    }

    #[test]
    fn drift_is_judged_on_the_fields_a_file_sets() {
        let def = definitions(1)
            .unwrap()
            .into_iter()
            .find(|d| d.name == LEDGER)
            .unwrap();
        let mut actual = def.config.clone();
        actual.description = Some("changed".to_owned());
        assert!(
            drift(&def, &actual).is_empty(),
            "descriptions are not drift"
        );
        actual.allow_atomic_publish = false;
        actual.deny_purge = false;
        let d = drift(&def, &actual);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].starts_with("allow_atomic") || d[1].starts_with("allow_atomic"),
            "{d:?}"
        );
    }
}
