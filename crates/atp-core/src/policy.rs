//! Privacy policy as data (CONTRACT §8, ARCHITECTURE decision 7): a tenant's versioned policy
//! document, its validation, and what it decides for an event — the classification of every
//! value in `data`, whose data it is, how long it is kept, and who reads it in clear.
//!
//! Everything here is pure. Ingest evaluates the policy current at acceptance and stamps the
//! record with the outcome ([`PolicyStamp`]); readers apply [`PolicyDocument::reads`] on every
//! read. A policy change never rewrites a record: each record names the version that decided it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::role::Permission;

/// The `policy` object of a record. Its field names are part of the record's canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStamp {
    pub policy_version: u32,
    pub classification: String,
    pub retention_policy_id: String,
}

impl Default for PolicyStamp {
    /// What [`PolicyDocument::default`] stamps: internal data, kept seven years.
    fn default() -> Self {
        Self {
            policy_version: 1,
            classification: Classification::Internal.as_str().to_owned(),
            retention_policy_id: DEFAULT_RETENTION.to_owned(),
        }
    }
}

/// How sensitive a value is, in increasing order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    Public,
    Internal,
    Confidential,
    /// About an identifiable person: encrypted with the data subject's key before hashing.
    Personal,
    /// Special-category data (health, biometrics, ...): encrypted like `personal`.
    Sensitive,
}

impl Classification {
    pub const ALL: [Classification; 5] = [
        Classification::Public,
        Classification::Internal,
        Classification::Confidential,
        Classification::Personal,
        Classification::Sensitive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::Internal => "internal",
            Classification::Confidential => "confidential",
            Classification::Personal => "personal",
            Classification::Sensitive => "sensitive",
        }
    }

    pub fn parse(s: &str) -> Option<Classification> {
        Classification::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Values of this class are sealed with their data subject's key before the record is
    /// hashed, so destroying the key erases them (crypto-shredding).
    pub fn is_encrypted(self) -> bool {
        self >= Classification::Personal
    }

    /// Position in [`Classification::ALL`] (0 = public): the read model's column for it.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The retention policy every record gets unless the tenant's policy says otherwise.
pub const DEFAULT_RETENTION: &str = "default-7y";
/// Seven years of 365.25 days: the common floor for financial and audit records.
const SEVEN_YEARS: u64 = 7 * 36_525 * 864;
/// Where the data subject's id is, unless a policy says otherwise.
pub const DEFAULT_SUBJECT: &str = "/actor/id";
/// The most rules a policy (tenant and sources together) may hold: enough for any real
/// payload, small enough that evaluating one event stays a few microseconds.
pub const MAX_RULES: usize = 1_000;

/// A tenant's policy document (`GET|PUT /api/v1/policy`). Paths are JSON Pointers into the
/// event's `data`; `*` matches any one member or array item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDocument {
    /// Set by ATP: 1 for the built-in default, then one more for every change. Ignored on PUT.
    #[serde(default)]
    pub policy_version: u32,
    /// The classification of a value no rule names.
    #[serde(default = "default_classification")]
    pub default_classification: Classification,
    /// JSON Pointer to the data subject's id inside `data`.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Classification rules; the most specific matching path wins (more segments, then fewer
    /// wildcards).
    #[serde(default)]
    pub fields: Vec<FieldRule>,
    #[serde(default)]
    pub retention: Retention,
    /// Which classifications each permission reads in clear. A permission not named reads the
    /// built-in default for it ([`default_readers`]).
    #[serde(default = "default_readers")]
    pub readers: BTreeMap<Permission, Vec<Classification>>,
    /// Refinements per source id: their rules win over the tenant's.
    #[serde(default)]
    pub sources: BTreeMap<String, SourcePolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldRule {
    /// JSON Pointer into `data`, e.g. `/attributes/email` or `/attributes/*`.
    pub path: String,
    pub classification: Classification,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourcePolicy {
    /// Where this source's events name their data subject, if not where the tenant's do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default)]
    pub fields: Vec<FieldRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retention {
    /// Retention policies by id (`retentionPolicyId`).
    pub policies: BTreeMap<String, RetentionPolicy>,
    /// The policy of a value neither map below decides.
    pub default: String,
    /// By the value's classification.
    #[serde(default)]
    pub by_classification: BTreeMap<Classification, String>,
    /// By the event's CloudEvents `type`; wins over `byClassification`.
    #[serde(default)]
    pub by_event_type: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionPolicy {
    /// How long a value is kept after its record's acceptance.
    pub duration_seconds: u64,
}

fn default_classification() -> Classification {
    Classification::Internal
}

fn default_subject() -> String {
    DEFAULT_SUBJECT.to_owned()
}

/// Producers, auditors and admins read everything ATP keeps in clear; only a data-protection
/// officer reads `personal` and `sensitive` values.
pub fn default_readers() -> BTreeMap<Permission, Vec<Classification>> {
    use Classification::*;
    Permission::ALL
        .into_iter()
        .map(|p| {
            let classes = match p {
                Permission::Privacy => Classification::ALL.to_vec(),
                _ => vec![Public, Internal, Confidential],
            };
            (p, classes)
        })
        .collect()
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            policies: BTreeMap::from([(
                DEFAULT_RETENTION.to_owned(),
                RetentionPolicy {
                    duration_seconds: SEVEN_YEARS,
                },
            )]),
            default: DEFAULT_RETENTION.to_owned(),
            by_classification: BTreeMap::new(),
            by_event_type: BTreeMap::new(),
        }
    }
}

impl Default for PolicyDocument {
    /// The policy of a tenant that has not set one: version 1, every value `internal`.
    fn default() -> Self {
        Self {
            policy_version: 1,
            default_classification: default_classification(),
            subject: default_subject(),
            fields: Vec::new(),
            retention: Retention::default(),
            readers: default_readers(),
            sources: BTreeMap::new(),
        }
    }
}

/// One thing wrong with a policy document, at a JSON Pointer into the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    pub path: String,
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        path: path.into(),
        message: message.into(),
    }
}

/// The JSON Schema of [`PolicyDocument`], published for editors and client generators.
pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(PolicyDocument)).unwrap_or(Value::Null)
}

/// Parses a policy document: shape errors name their path (`/fields/2/classification`), then
/// [`PolicyDocument::validate`] checks what the shape cannot.
pub fn parse(bytes: &[u8]) -> Result<PolicyDocument, Vec<PolicyError>> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let doc: PolicyDocument = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Map { key } => Some(escape(key)),
                serde_path_to_error::Segment::Enum { variant } => Some(escape(variant)),
                serde_path_to_error::Segment::Unknown => None,
            })
            .fold(String::new(), |acc, s| acc + "/" + &s);
        vec![err(path, e.into_inner().to_string())]
    })?;
    doc.validate()?;
    Ok(doc)
}

/// The members `data` may have (CONTRACT §2's audit payload), and below them what may follow.
fn data_path_allowed(segments: &[String]) -> bool {
    match segments {
        [] => false,
        [first, rest @ ..] => match first.as_str() {
            "action" | "outcome" => rest.is_empty(),
            "actor" | "resource" => {
                rest.is_empty() || matches!(rest, [s] if matches!(s.as_str(), "id" | "type" | "*"))
            }
            "attributes" => rest.len() <= 1,
            "*" => rest.len() <= 1,
            _ => false,
        },
    }
}

fn valid_policy_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl PolicyDocument {
    /// Everything the schema cannot say: pointers are well formed and inside `data`'s shape,
    /// rules are unique, every retention reference names a defined policy, source ids are
    /// valid. Every error is reported, each with its path.
    pub fn validate(&self) -> Result<(), Vec<PolicyError>> {
        let mut errors = Vec::new();
        check_subject(&self.subject, "/subject", &mut errors);
        check_rules(&self.fields, "/fields", &mut errors);
        let mut rules = self.fields.len();
        for (id, source) in &self.sources {
            let at = format!("/sources/{}", escape(id));
            if crate::SourceId::new(id).is_err() {
                errors.push(err(&at, "not a valid source id"));
            }
            if let Some(s) = &source.subject {
                check_subject(s, &format!("{at}/subject"), &mut errors);
            }
            check_rules(&source.fields, &format!("{at}/fields"), &mut errors);
            rules += source.fields.len();
        }
        if rules > MAX_RULES {
            errors.push(err("/fields", format!("more than {MAX_RULES} rules")));
        }
        let r = &self.retention;
        for (id, p) in &r.policies {
            let at = format!("/retention/policies/{}", escape(id));
            if !valid_policy_id(id) {
                errors.push(err(&at, "a retention policy id is 1 to 63 of a-z, 0-9 and '-', starting with a letter or digit"));
            }
            if p.duration_seconds == 0 {
                errors.push(err(format!("{at}/durationSeconds"), "must be at least 1"));
            }
        }
        let known = |id: &String, at: String, errors: &mut Vec<PolicyError>| {
            if !r.policies.contains_key(id) {
                errors.push(err(at, format!("no retention policy {id:?} is defined")));
            }
        };
        known(&r.default, "/retention/default".to_owned(), &mut errors);
        for (c, id) in &r.by_classification {
            known(
                id,
                format!("/retention/byClassification/{}", c.as_str()),
                &mut errors,
            );
        }
        for (ty, id) in &r.by_event_type {
            let at = format!("/retention/byEventType/{}", escape(ty));
            if ty.is_empty() {
                errors.push(err(&at, "an event type must not be empty"));
            }
            known(id, at, &mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Does `permission` read values of `class` in clear?
    pub fn reads(&self, permission: Permission, class: Classification) -> bool {
        match self.readers.get(&permission) {
            Some(classes) => classes.contains(&class),
            None => default_readers()
                .get(&permission)
                .is_some_and(|c| c.contains(&class)),
        }
    }

    /// The classifications a caller holding `permissions` reads in clear (the union).
    pub fn readable(&self, permissions: &[Permission]) -> Vec<Classification> {
        Classification::ALL
            .into_iter()
            .filter(|c| permissions.iter().any(|p| self.reads(*p, *c)))
            .collect()
    }

    fn retention_for(&self, event_type: &str, class: Classification) -> &str {
        let r = &self.retention;
        r.by_event_type
            .get(event_type)
            .or_else(|| r.by_classification.get(&class))
            .unwrap_or(&r.default)
    }

    /// The bucket of a key sealing values under `retention_policy_id` accepted `at`
    /// ([`bucket_of`]; a policy not defined here is kept as long as the default).
    pub fn bucket(&self, retention_policy_id: &str, at: chrono::DateTime<chrono::Utc>) -> String {
        let d = self
            .duration(retention_policy_id)
            .or_else(|| self.duration(&self.retention.default))
            .unwrap_or(std::time::Duration::from_secs(SEVEN_YEARS));
        bucket_of(d, at)
    }

    /// How long values under `retention_policy_id` are kept (`None`: not defined here).
    pub fn duration(&self, retention_policy_id: &str) -> Option<std::time::Duration> {
        self.retention
            .policies
            .get(retention_policy_id)
            .map(|p| std::time::Duration::from_secs(p.duration_seconds))
    }

    /// Where the data subject's id is in the `data` of `source`'s events: the source's own
    /// pointer if its refinement names one, else the tenant's.
    pub fn subject_pointer(&self, source: &str) -> &str {
        self.sources
            .get(source)
            .and_then(|s| s.subject.as_deref())
            .unwrap_or(&self.subject)
    }

    /// True when every value of every event gets the default classification (no rule
    /// anywhere): what a tenant without a policy has, decided without walking `data`.
    pub fn is_uniform(&self) -> bool {
        self.fields.is_empty() && self.sources.values().all(|s| s.fields.is_empty())
    }

    /// What the policy decides for the `data` of an event of `event_type` from `source`.
    pub fn classify(&self, source: &str, event_type: &str, data: &Value) -> Classified {
        let refinement = self.sources.get(source).map(|s| compile(&s.fields));
        let tenant_rules = compile(&self.fields);
        let subject = data
            .pointer(self.subject_pointer(source))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let mut fields = Vec::new();
        for_each_leaf(data, &mut Vec::new(), &mut |segments| {
            let class = refinement
                .as_ref()
                .and_then(|s| best_rule(s, segments))
                .or_else(|| best_rule(&tenant_rules, segments))
                .unwrap_or(self.default_classification);
            fields.push(FieldClass {
                path: pointer(segments),
                classification: class,
                retention_policy_id: self.retention_for(event_type, class).to_owned(),
            });
        });
        let classification = fields
            .iter()
            .map(|f| f.classification)
            .max()
            .unwrap_or(self.default_classification)
            .max(self.default_classification);
        Classified {
            policy_version: self.policy_version,
            subject,
            classification,
            retention_policy_id: self.retention_for(event_type, classification).to_owned(),
            fields,
        }
    }
}

/// The time bucket a subject key covers (ADR 0019): the acceptance period whose values one key
/// seals, as long as fits in the retention duration — a month for durations of a month and
/// more, else a day, an hour, a minute or a second — so a key expires at most one bucket after
/// its values' retention ends, never before. The id is the bucket's start, UTC, in digits:
/// `yyyymm`, `yyyymmdd`, `yyyymmddhh`, `yyyymmddhhmm` or `yyyymmddhhmmss`.
pub fn bucket_of(duration: std::time::Duration, at: chrono::DateTime<chrono::Utc>) -> String {
    const DAY: u64 = 86_400;
    let format = match duration.as_secs() {
        s if s >= 31 * DAY => "%Y%m",
        s if s >= DAY => "%Y%m%d",
        s if s >= 3_600 => "%Y%m%d%H",
        s if s >= 60 => "%Y%m%d%H%M",
        _ => "%Y%m%d%H%M%S",
    };
    at.format(format).to_string()
}

/// When a bucket named by [`bucket_of`] ends (`None`: not a bucket id).
pub fn bucket_end(bucket: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{Duration, NaiveDate, TimeZone, Utc};
    let n = |range: std::ops::Range<usize>| bucket.get(range)?.parse::<u32>().ok();
    if !bucket.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m) = (i32::try_from(n(0..4)?).ok()?, n(4..6)?);
    let day = |d: u32| NaiveDate::from_ymd_opt(y, m, d);
    let start = match bucket.len() {
        6 => {
            let next = if m == 12 {
                NaiveDate::from_ymd_opt(y + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(y, m + 1, 1)
            };
            return Some(Utc.from_utc_datetime(&next?.and_hms_opt(0, 0, 0)?));
        }
        8 => (day(n(6..8)?)?.and_hms_opt(0, 0, 0)?, Duration::days(1)),
        10 => (
            day(n(6..8)?)?.and_hms_opt(n(8..10)?, 0, 0)?,
            Duration::hours(1),
        ),
        12 => (
            day(n(6..8)?)?.and_hms_opt(n(8..10)?, n(10..12)?, 0)?,
            Duration::minutes(1),
        ),
        14 => (
            day(n(6..8)?)?.and_hms_opt(n(8..10)?, n(10..12)?, n(12..14)?)?,
            Duration::seconds(1),
        ),
        _ => return None,
    };
    Some(Utc.from_utc_datetime(&start.0) + start.1)
}

/// The policy's decision for one event's `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Classified {
    pub policy_version: u32,
    /// The data subject's id, when the subject pointer finds a non-empty string.
    pub subject: Option<String>,
    /// The highest classification of any value: the record's.
    pub classification: Classification,
    /// The record's retention: by event type, else by its classification, else the default.
    pub retention_policy_id: String,
    /// Every value (leaf) of `data`, in document order.
    pub fields: Vec<FieldClass>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldClass {
    /// JSON Pointer into `data`.
    pub path: String,
    pub classification: Classification,
    pub retention_policy_id: String,
}

impl Classified {
    /// The stamp a record accepted under this decision carries.
    pub fn stamp(&self) -> PolicyStamp {
        PolicyStamp {
            policy_version: self.policy_version,
            classification: self.classification.as_str().to_owned(),
            retention_policy_id: self.retention_policy_id.clone(),
        }
    }

    /// The values sealed before hashing.
    pub fn encrypted(&self) -> impl Iterator<Item = &FieldClass> {
        self.fields
            .iter()
            .filter(|f| f.classification.is_encrypted())
    }
}

/// A rule with its path split into segments (once per classification, not once per value).
type Compiled = Vec<(Vec<String>, Classification)>;

fn compile(rules: &[FieldRule]) -> Compiled {
    rules
        .iter()
        .filter_map(|r| Some((split(&r.path).ok()?, r.classification)))
        .collect()
}

/// The most specific rule matching `segments`: a rule matches a value at or below its path.
fn best_rule(rules: &Compiled, segments: &[String]) -> Option<Classification> {
    rules
        .iter()
        .filter_map(|(rule, class)| {
            let matches = rule.len() <= segments.len()
                && rule.iter().zip(segments).all(|(p, s)| p == "*" || p == s);
            let wildcards = rule.iter().filter(|p| *p == "*").count();
            matches.then_some(((rule.len(), std::cmp::Reverse(wildcards)), *class))
        })
        .max_by_key(|(rank, _)| *rank)
        .map(|(_, c)| c)
}

fn for_each_leaf(value: &Value, at: &mut Vec<String>, f: &mut impl FnMut(&[String])) {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                at.push(k.clone());
                for_each_leaf(v, at, f);
                at.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                at.push(i.to_string());
                for_each_leaf(v, at, f);
                at.pop();
            }
        }
        _ => f(at),
    }
}

fn check_subject(p: &str, at: &str, errors: &mut Vec<PolicyError>) {
    match split(p) {
        Ok(s) if s.iter().any(|x| x == "*") => {
            errors.push(err(at, "the subject pointer names one value: no '*'"))
        }
        Ok(s) if !data_path_allowed(&s) => errors.push(err(at, outside_data(p))),
        Ok(_) => {}
        Err(e) => errors.push(err(at, e)),
    }
}

fn check_rules(rules: &[FieldRule], at: &str, errors: &mut Vec<PolicyError>) {
    let mut seen = std::collections::HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        let here = format!("{at}/{i}/path");
        match split(&r.path) {
            Ok(s) if !data_path_allowed(&s) => errors.push(err(&here, outside_data(&r.path))),
            Ok(_) if !seen.insert(r.path.as_str()) => {
                errors.push(err(&here, format!("{:?} has another rule above", r.path)))
            }
            Ok(_) => {}
            Err(e) => errors.push(err(&here, e)),
        }
    }
}

fn outside_data(p: &str) -> String {
    format!(
        "{p:?} is not inside data: paths start with /actor, /action, /resource, /outcome or \
         /attributes (or /*), at most two segments deep"
    )
}

/// Splits a JSON Pointer (RFC 6901) into its unescaped segments.
pub fn split(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!(
            "{pointer:?} is not a JSON Pointer: it must start with '/'"
        ));
    };
    rest.split('/')
        .map(|seg| {
            let mut out = String::with_capacity(seg.len());
            let mut chars = seg.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => out.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "{pointer:?}: '~' must be followed by 0 or 1 (RFC 6901)"
                            ));
                        }
                    },
                }
            }
            Ok(out)
        })
        .collect()
}

/// Escapes one segment for a JSON Pointer.
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The JSON Pointer of `segments`.
pub fn pointer(segments: &[String]) -> String {
    segments
        .iter()
        .fold(String::new(), |acc, s| acc + "/" + &escape(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> Value {
        json!({
            "actor": {"id": "u-1", "type": "user"},
            "action": "UPDATE",
            "resource": {"type": "contact", "id": "c-9"},
            "attributes": {"email": "ada@example.com", "ssn": "078-05-1120", "plan": "gold", "a/b": 1}
        })
    }

    fn policy() -> PolicyDocument {
        parse(
            br#"{
                "defaultClassification": "internal",
                "fields": [
                    {"path": "/actor/id", "classification": "personal"},
                    {"path": "/attributes/*", "classification": "confidential"},
                    {"path": "/attributes/email", "classification": "personal"},
                    {"path": "/attributes/ssn", "classification": "sensitive"},
                    {"path": "/attributes/a~1b", "classification": "public"}
                ],
                "retention": {
                    "policies": {"default-7y": {"durationSeconds": 220898664}, "gdpr-2y": {"durationSeconds": 63115200}, "short": {"durationSeconds": 1}},
                    "default": "default-7y",
                    "byClassification": {"personal": "gdpr-2y"},
                    "byEventType": {"com.acme.ping": "short"}
                },
                "sources": {"hr": {"subject": "/resource/id", "fields": [{"path": "/resource/id", "classification": "sensitive"}]}}
            }"#,
        )
        .unwrap()
    }

    fn class_of(c: &Classified, path: &str) -> (Classification, String) {
        let f = c.fields.iter().find(|f| f.path == path).unwrap();
        (f.classification, f.retention_policy_id.clone())
    }

    #[test]
    fn the_most_specific_rule_wins_and_sources_refine() {
        use Classification::*;
        let p = policy();
        let c = p.classify("crm", "com.acme.update", &data());
        let table: [(&str, Classification, &str); 9] = [
            ("/actor/id", Personal, "gdpr-2y"),
            ("/actor/type", Internal, "default-7y"),
            ("/action", Internal, "default-7y"),
            ("/resource/type", Internal, "default-7y"),
            ("/resource/id", Internal, "default-7y"),
            ("/attributes/email", Personal, "gdpr-2y"),
            ("/attributes/ssn", Sensitive, "default-7y"),
            ("/attributes/plan", Confidential, "default-7y"),
            ("/attributes/a~1b", Public, "default-7y"),
        ];
        for (path, class, retention) in table {
            assert_eq!(class_of(&c, path), (class, retention.to_owned()), "{path}");
        }
        assert_eq!(c.fields.len(), 9);
        assert_eq!(c.subject.as_deref(), Some("u-1"));
        assert_eq!(c.classification, Sensitive);
        assert_eq!(c.encrypted().count(), 3);

        let hr = p.classify("hr", "com.acme.update", &data());
        assert_eq!(class_of(&hr, "/resource/id").0, Sensitive);
        assert_eq!(hr.subject.as_deref(), Some("c-9"));
        assert_eq!(p.subject_pointer("hr"), "/resource/id");
        assert_eq!(p.subject_pointer("crm"), "/actor/id");
        // The event type's retention wins over the classification's.
        let ping = p.classify("crm", "com.acme.ping", &data());
        assert_eq!(class_of(&ping, "/attributes/email").1, "short");
        assert_eq!(ping.retention_policy_id, "short");
    }

    #[test]
    fn the_default_policy_stamps_what_records_always_had() {
        let c = PolicyDocument::default().classify("crm", "t", &data());
        assert_eq!(c.stamp(), PolicyStamp::default());
        assert_eq!(c.encrypted().count(), 0);
        assert_eq!(PolicyDocument::default().validate(), Ok(()));
    }

    #[test]
    fn readers_default_to_clear_below_personal_and_privacy_reads_everything() {
        use Classification::*;
        let p = PolicyDocument::default();
        for perm in [Permission::Producer, Permission::Auditor, Permission::Admin] {
            assert_eq!(p.readable(&[perm]), vec![Public, Internal, Confidential]);
        }
        assert_eq!(
            p.readable(&[Permission::Privacy]),
            Classification::ALL.to_vec()
        );
        let mut narrow = p.clone();
        narrow.readers = BTreeMap::from([(Permission::Producer, vec![Public])]);
        assert_eq!(narrow.readable(&[Permission::Producer]), vec![Public]);
        // Not named: the default for that permission.
        assert!(narrow.reads(Permission::Auditor, Confidential));
        assert_eq!(
            narrow.readable(&[Permission::Producer, Permission::Auditor]),
            vec![Public, Internal, Confidential]
        );
    }

    #[test]
    fn errors_name_their_path() {
        let cases: [(&str, &str); 9] = [
            (
                r#"{"fields": [{"path": "/x", "classification": "public"}]}"#,
                "/fields/0/path",
            ),
            (
                r#"{"fields": [{"path": "/actor/id", "classification": "secret"}]}"#,
                "/fields/0/classification",
            ),
            (
                r#"{"fields": [{"path": "actor", "classification": "public"}]}"#,
                "/fields/0/path",
            ),
            (
                r#"{"fields": [{"path": "/action", "classification": "public"}, {"path": "/action", "classification": "personal"}]}"#,
                "/fields/1/path",
            ),
            (r#"{"subject": "/attributes/*"}"#, "/subject"),
            (
                r#"{"retention": {"policies": {}, "default": "nope"}}"#,
                "/retention/default",
            ),
            (
                r#"{"retention": {"policies": {"a": {"durationSeconds": 0}}, "default": "a"}}"#,
                "/retention/policies/a/durationSeconds",
            ),
            (r#"{"sources": {"Bad Source": {}}}"#, "/sources/Bad Source"),
            (r#"{"unknown": 1}"#, "/unknown"),
        ];
        for (doc, path) in cases {
            let errors = parse(doc.as_bytes()).unwrap_err();
            assert_eq!(errors[0].path, path, "{doc}: {errors:?}");
        }
        // Every error at once, not only the first.
        let many = parse(br#"{"subject": "x", "retention": {"policies": {}, "default": "y"}}"#)
            .unwrap_err();
        assert_eq!(many.len(), 2, "{many:?}");
    }

    #[test]
    fn pointers_round_trip_rfc_6901_escapes() {
        for segs in [
            vec![],
            vec!["a/b".to_owned(), "~x".to_owned()],
            vec!["".to_owned()],
        ] {
            assert_eq!(split(&pointer(&segs)).unwrap(), segs);
        }
        assert!(split("/a~2").is_err());
        assert!(split("a").is_err());
    }

    #[test]
    fn buckets_fit_in_their_retention_and_end_where_they_say() {
        use chrono::TimeZone;
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 12, 31, 23, 59, 58)
            .unwrap();
        let day = 86_400;
        let table: [(u64, &str, &str); 5] = [
            (7 * 365 * day, "202612", "2027-01-01T00:00:00+00:00"),
            (2 * day, "20261231", "2027-01-01T00:00:00+00:00"),
            (3_600, "2026123123", "2027-01-01T00:00:00+00:00"),
            (90, "202612312359", "2027-01-01T00:00:00+00:00"),
            (1, "20261231235958", "2026-12-31T23:59:59+00:00"),
        ];
        for (secs, id, end) in table {
            let d = std::time::Duration::from_secs(secs);
            assert_eq!(bucket_of(d, at), id, "{secs}");
            let e = bucket_end(id).unwrap();
            assert_eq!(e.to_rfc3339(), end, "{id}");
            // A bucket is never longer than the retention it serves.
            assert!((e - at).num_seconds() as u64 <= secs.max(1), "{id}");
        }
        for bad in ["", "2026", "20261", "2026133", "abcdef", "2026120"] {
            assert_eq!(bucket_end(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_schema_is_published() {
        let s = schema();
        assert_eq!(s["title"], "PolicyDocument");
        assert!(s["properties"]["fields"].is_object(), "{s}");
    }
}
