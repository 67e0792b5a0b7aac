//! Admission of one submitted CloudEvent: parse strictly, validate against CloudEvents 1.0 and
//! the audit `data` schema, check tenant and source, verify the DSSE signature.
//!
//! `admit` is a pure function of the submission and the source's registration (looked up by the
//! caller beforehand). Its result is either an [`Admitted`] event, ready to be sealed into a
//! record, or a [`Rejection`] with the contract's reason code.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::canonical::{self, CanonicalError};
use crate::chain::Digest;
use crate::dsse::{self, DsseError, Envelope, SignedFields};
use crate::names::PartitionKey;
use crate::reason::{Reason, Rejection};
use crate::registry::SourceRegistration;

/// Longest CloudEvents `id` ATP takes (CONTRACT §2).
pub const MAX_ID_LEN: usize = 128;
/// Extension attributes that must be covered by the signature when present.
pub const MUST_SIGN: [&str; 2] = ["sequence", "tenantid"];
const CORE_ATTRIBUTES: [&str; 8] = [
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// The audit payload every event's `data` carries (CONTRACT §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditData {
    pub actor: Actor,
    /// What was done: `CREATE`, `UPDATE`, `DELETE`, `READ`, `LOGIN`, ...
    pub action: String,
    pub resource: Resource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Flat JSON: string, number, boolean or null values only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Actor {
    pub id: String,
    #[serde(rename = "type")]
    pub ty: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Resource {
    #[serde(rename = "type")]
    pub ty: String,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

/// The JSON Schema (2020-12) of [`AuditData`]: what admission checks an event's `data`
/// against, published so that producers can validate before sending and cite it as
/// `dataschema`.
pub fn data_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(AuditData)).unwrap_or(Value::Null)
}

/// The part of [`AuditData`] every read model needs; permissive about extra members so that
/// records admitted under a schema allowing them still project.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuditFacets {
    pub actor: Actor,
    pub action: String,
    pub resource: Resource,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub attributes: Option<Map<String, Value>>,
}

/// How the submission reached ATP, established by the shell (never by the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// Published straight to `atp.ingress.*` by a producer.
    Nats,
    /// Forwarded by the gateway for an authenticated token subject.
    Gateway { subject: String },
}

/// A message as it arrived on `atp.ingress.<tenant>.<source>`.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    pub body: &'a [u8],
    /// `content-type` header, if any.
    pub content_type: Option<&'a str>,
    /// `ce-*` headers (binary mode), names lower-cased without the `ce-` prefix, every value
    /// as it came (a name may repeat; admission refuses that).
    pub ce_headers: Vec<(String, String)>,
    /// Names (lower-cased) of the headers ATP reads that came more than once, in any case
    /// (`ce-id` and `CE-ID`, two `content-type` values): such a message is ambiguous, and
    /// dedupe and the record could read different values, so admission refuses it.
    pub repeated: Vec<String>,
    pub channel: Channel,
    /// The [`UNMAPPABLE_HEADER`] a producer's relay set: why it could not map this message of
    /// the producer's own system onto an event. Such a message is refused as `UNMAPPABLE`
    /// with that detail, before anything else is read from it.
    pub unmappable: Option<&'a str>,
}

impl<'a> Submission<'a> {
    /// Reads the headers ATP cares about from `(name, value)` pairs as they arrived, names in
    /// any case: `content-type` and the binary-mode `ce-*` attributes.
    pub fn from_headers(
        body: &'a [u8],
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        channel: Channel,
    ) -> Self {
        let mut content_type = None;
        let mut ce_headers: Vec<(String, String)> = Vec::new();
        let mut repeated: Vec<String> = Vec::new();
        let mut unmappable = None;
        let note_repeat = |name: &str, repeated: &mut Vec<String>| {
            if !repeated.iter().any(|r| r == name) {
                repeated.push(name.to_owned());
            }
        };
        for (name, value) in headers {
            let lower = name.to_ascii_lowercase();
            if lower == "content-type" {
                if content_type.is_some() {
                    note_repeat(&lower, &mut repeated);
                } else {
                    content_type = Some(value);
                }
            } else if lower == UNMAPPABLE_HEADER_LOWER {
                if unmappable.is_some() {
                    note_repeat(&lower, &mut repeated);
                } else {
                    unmappable = Some(value);
                }
            } else if let Some(attr) = lower.strip_prefix(CE_HEADER_PREFIX) {
                if ce_headers.iter().any(|(n, _)| n == attr) {
                    note_repeat(&lower, &mut repeated);
                }
                ce_headers.push((attr.to_owned(), value.to_owned()));
            }
        }
        Self {
            body,
            content_type,
            ce_headers,
            repeated,
            channel,
            unmappable,
        }
    }
}

/// The header with which a producer's relay forwards a message it could not map onto an
/// event, as received, so that it ends as a rejection rather than nowhere (ADR 0024). Its value
/// says what was missing; it may only narrow what happens to the producer's own submission.
pub const UNMAPPABLE_HEADER: &str = "Atp-Unmappable";
const UNMAPPABLE_HEADER_LOWER: &str = "atp-unmappable";
/// Longest detail taken from [`UNMAPPABLE_HEADER`].
pub const MAX_UNMAPPABLE_DETAIL: usize = 512;

/// Binary-mode CloudEvents attributes travel as headers with this prefix (any case).
pub const CE_HEADER_PREFIX: &str = "ce-";

/// Longest `type`, `subject` or `dataschema` ATP takes: these are copied into read models and
/// log fields, so they are bounded like the id. 1 KiB holds any reasonable URI or type name.
pub const MAX_ATTRIBUTE_LEN: usize = 1024;

/// Refuses a value ATP copies into a header, a key, a read-model column or a log field when it
/// holds a control character (C0, DEL or C1: a newline would break a NATS header line and
/// forge log lines) or is longer than `max` bytes.
pub fn check_text(what: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.len() > max {
        return Err(reject(
            Reason::Malformed,
            format!("{what} is {} bytes; at most {max}", value.len()),
        ));
    }
    if let Some((at, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(reject(
            Reason::Malformed,
            format!(
                "{what} holds the control character U+{:04X} at byte {at}",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// The `producer` object of a record: who signed and how the submitter authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProducerStamp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub auth: String,
}

/// An event that passed admission.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The event in structured form, as received (binary mode: its body as `data_base64`).
    pub event: Map<String, Value>,
    pub id: String,
    pub sequence: Option<u64>,
    pub occurred_at: DateTime<Utc>,
    pub producer: ProducerStamp,
    /// What makes two submissions of one id the same event ([`fingerprint`]).
    pub fingerprint: Digest,
}

/// Attributes left out of an event's [`fingerprint`]: the time (the gateway's short form stamps
/// the time of receipt when the caller gives none, so a retry carries another), the signature
/// (a re-signed event is the same event) and the trace context (each retry has its own).
const NOT_CONTENT: [&str; 6] = [
    "time",
    "dssematerial",
    "traceparent",
    "tracestate",
    "data",
    "data_base64",
];

/// The content of an event for idempotency (ADR 0013): SHA-256 over its attributes but
/// [`NOT_CONTENT`], in name order, and the bytes its signature covers for `data` (the canonical
/// form of JSON `data`, the decoded `data_base64`). A repeat of the same event has the same
/// fingerprint; the same id with another fingerprint is an [`Reason::IdempotencyConflict`].
pub fn fingerprint(event: &Map<String, Value>, data_bytes: &[u8]) -> Digest {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut names: Vec<&String> = event
        .keys()
        .filter(|k| !NOT_CONTENT.contains(&k.as_str()))
        .collect();
    names.sort();
    for name in names {
        let value = event.get(name.as_str()).map(ext_string).unwrap_or_default();
        // Length-prefixed, so no two attribute sets hash alike by shifting bytes between them.
        for part in [name.as_bytes(), value.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    h.update((data_bytes.len() as u64).to_be_bytes());
    h.update(data_bytes);
    Digest(h.finalize().into())
}

/// [`fingerprint`] of the event in a record's stored bytes (`None` if they do not open).
pub fn record_fingerprint(record_bytes: &[u8]) -> Option<Digest> {
    let opened = crate::record::open(record_bytes, false).ok()?;
    stored_fingerprint(&opened.record.event)
}

/// The refusal of an id recorded before with other content (ADR 0013), naming that record.
pub fn idempotency_conflict(
    id: &str,
    chain_index: impl std::fmt::Display,
    record_id: &str,
) -> Rejection {
    reject(
        Reason::IdempotencyConflict,
        format!(
            "id {id:?} was recorded at chainIndex {chain_index} (recordId {record_id}) with other \
             content; a repeat must be the same event, a new event needs a new id"
        ),
    )
}

/// [`fingerprint`] of an event as ATP stored it (structured form), for events recorded before.
pub fn stored_fingerprint(event: &Value) -> Option<Digest> {
    let obj = event.as_object()?;
    let data_bytes = match (obj.get("data"), obj.get("data_base64")) {
        (Some(d), None) => canonical::to_canonical(d).ok()?,
        (None, Some(Value::String(b64))) => STANDARD.decode(b64).ok()?,
        _ => return None,
    };
    Some(fingerprint(obj, &data_bytes))
}

fn reject(reason: Reason, detail: impl Into<String>) -> Rejection {
    Rejection::new(reason, detail)
}

fn malformed(e: CanonicalError) -> Rejection {
    reject(Reason::Malformed, e.to_string())
}

/// Turns a binary-mode message into the structured form ATP stores.
fn structured_from_binary(sub: &Submission<'_>) -> Map<String, Value> {
    let mut event = Map::new();
    for (name, value) in &sub.ce_headers {
        event.insert(name.clone(), Value::String(value.clone()));
    }
    if let Some(ct) = sub.content_type {
        event.insert("datacontenttype".to_owned(), Value::String(ct.to_owned()));
    }
    event.insert(
        "data_base64".to_owned(),
        Value::String(STANDARD.encode(sub.body)),
    );
    event
}

fn is_binary_mode(sub: &Submission<'_>) -> bool {
    sub.ce_headers.iter().any(|(n, _)| n == "specversion")
}

fn string_attr<'e>(
    event: &'e Map<String, Value>,
    name: &str,
) -> Result<Option<&'e str>, Rejection> {
    match event.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(reject(
            Reason::SchemaValidationFailed,
            format!("attribute {name:?} must be a string"),
        )),
    }
}

fn required<'e>(event: &'e Map<String, Value>, name: &str) -> Result<&'e str, Rejection> {
    match string_attr(event, name)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(reject(
            Reason::SchemaValidationFailed,
            format!("required attribute {name:?} is missing"),
        )),
    }
}

/// CloudEvents' canonical string form of an extension value (strings as-is, others as JSON).
fn ext_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Checks a submission against its source's registration, in the order a reader would: the
/// envelope (size, headers, strict JSON), the CloudEvents context attributes, the tenant and
/// the source, the signature, then the audit payload.
///
/// `registration` is `None` when the tenant has no such source. A revoked key is refused
/// whenever it was revoked: admission reads no clock.
pub fn admit(
    partition: &PartitionKey,
    sub: &Submission<'_>,
    registration: Option<&SourceRegistration>,
) -> Result<Admitted, Rejection> {
    let max = registration.map_or(crate::registry::DEFAULT_MAX_EVENT_BYTES, |r| {
        r.max_event_bytes
    });
    if sub.body.len() > max {
        return Err(reject(
            Reason::TooLarge,
            format!("event is {} bytes; the limit is {max}", sub.body.len()),
        ));
    }
    if let Some(name) = sub.repeated.first() {
        return Err(reject(
            Reason::Malformed,
            format!("header {name:?} is given more than once (names are case-insensitive)"),
        ));
    }
    if let Some(why) = sub.unmappable {
        let why = match check_text(UNMAPPABLE_HEADER, why, MAX_UNMAPPABLE_DETAIL) {
            Ok(()) if !why.trim().is_empty() => why.trim(),
            _ => "(the relay's reason was empty, too long or not printable)",
        };
        return Err(reject(
            Reason::Unmappable,
            format!("the producer's relay could not map this message: {why}"),
        ));
    }
    let parsed = parse(sub)?;
    let ctx = Context::of(&parsed.event, parsed.binary)?;
    let reg = registration_for(partition, sub, &parsed.event, ctx.source, registration)?;
    let sequence = sequence_of(&parsed.event)?;
    let producer = producer_stamp(sub, &parsed.event, reg, &ctx, &parsed.data_bytes)?;
    check_data(&parsed.data_value, reg.allow_unknown_data_fields)?;

    let fingerprint = fingerprint(&parsed.event, &parsed.data_bytes);
    Ok(Admitted {
        fingerprint,
        id: ctx.id.to_owned(),
        sequence,
        occurred_at: ctx.occurred_at,
        producer,
        event: parsed.event,
    })
}

/// A submission in the structured form, parsed strictly: its attributes, and its data as a
/// value and as the bytes the signature covers.
struct Parsed {
    binary: bool,
    event: Map<String, Value>,
    data_value: Value,
    data_bytes: Vec<u8>,
}

fn parse(sub: &Submission<'_>) -> Result<Parsed, Rejection> {
    let binary = is_binary_mode(sub);
    let (event, data_value, data_bytes) = if binary {
        let data = canonical::parse_submission(sub.body).map_err(malformed)?;
        (structured_from_binary(sub), data, sub.body.to_vec())
    } else {
        let Value::Object(event) = canonical::parse_submission(sub.body).map_err(malformed)? else {
            return Err(reject(
                Reason::Malformed,
                "a structured-mode event must be a JSON object",
            ));
        };
        let (data, bytes) = match (event.get("data"), event.get("data_base64")) {
            (Some(_), Some(_)) => {
                return Err(reject(
                    Reason::SchemaValidationFailed,
                    "an event carries either data or data_base64",
                ));
            }
            (Some(d), None) => (d.clone(), canonical::to_canonical(d).map_err(malformed)?),
            (None, Some(Value::String(b64))) => {
                let bytes = STANDARD.decode(b64).map_err(|_| {
                    reject(Reason::SchemaValidationFailed, "data_base64 is not base64")
                })?;
                (
                    canonical::parse_submission(&bytes).map_err(malformed)?,
                    bytes,
                )
            }
            (None, Some(_)) => {
                return Err(reject(
                    Reason::SchemaValidationFailed,
                    "data_base64 must be a string",
                ));
            }
            (None, None) => {
                return Err(reject(
                    Reason::SchemaValidationFailed,
                    "required attribute \"data\" is missing",
                ));
            }
        };
        (event, data, bytes)
    };
    Ok(Parsed {
        binary,
        event,
        data_value,
        data_bytes,
    })
}

/// The CloudEvents 1.0 context attributes, checked; every text one bounded and free of
/// control characters before it can reach a header, a key or a log line.
struct Context<'e> {
    specversion: &'e str,
    id: &'e str,
    source: &'e str,
    ty: &'e str,
    occurred_at: DateTime<Utc>,
    datacontenttype: &'e str,
    dataschema: Option<&'e str>,
    subject: Option<&'e str>,
}

impl<'e> Context<'e> {
    fn of(event: &'e Map<String, Value>, binary: bool) -> Result<Context<'e>, Rejection> {
        let specversion = required(event, "specversion")?;
        if specversion != "1.0" {
            return Err(reject(
                Reason::SchemaValidationFailed,
                format!("specversion {specversion:?} is not \"1.0\""),
            ));
        }
        let id = required(event, "id")?;
        if id.len() > MAX_ID_LEN {
            return Err(reject(
                Reason::SchemaValidationFailed,
                format!("id is {} bytes; at most {MAX_ID_LEN}", id.len()),
            ));
        }
        // The id becomes a NATS header, a dedupe key and a read-model key: checked before any of
        // those is built.
        check_text("id", id, MAX_ID_LEN)?;
        let source = required(event, "source")?;
        check_text("source", source, MAX_ATTRIBUTE_LEN)?;
        let ty = required(event, "type")?;
        check_text("type", ty, MAX_ATTRIBUTE_LEN)?;
        let time_str = required(event, "time")?;
        let occurred_at = DateTime::parse_from_rfc3339(time_str)
            .map_err(|e| {
                reject(
                    Reason::SchemaValidationFailed,
                    format!("time {time_str:?} is not RFC 3339: {e}"),
                )
            })?
            .with_timezone(&Utc);
        let datacontenttype = required(event, "datacontenttype")?;
        if datacontenttype != "application/json" {
            return Err(reject(
                Reason::SchemaValidationFailed,
                format!("datacontenttype {datacontenttype:?} is not \"application/json\""),
            ));
        }
        let dataschema = string_attr(event, "dataschema")?;
        let subject = string_attr(event, "subject")?;
        for (what, v) in [("dataschema", dataschema), ("subject", subject)] {
            if let Some(v) = v {
                check_text(what, v, MAX_ATTRIBUTE_LEN)?;
            }
        }
        // The SDK's own model is the second opinion on the attribute set (types, URI-reference).
        if !binary {
            check_with_sdk(event)?;
        }

        Ok(Context {
            specversion,
            id,
            source,
            ty,
            occurred_at,
            datacontenttype,
            dataschema,
            subject,
        })
    }
}

/// The source's registration, once the event's tenant and source agree with the subject's.
fn registration_for<'r>(
    partition: &PartitionKey,
    sub: &Submission<'_>,
    event: &Map<String, Value>,
    source: &str,
    registration: Option<&'r SourceRegistration>,
) -> Result<&'r SourceRegistration, Rejection> {
    if let Some(t) = event.get("tenantid") {
        let claimed = ext_string(t);
        if claimed != partition.tenant.as_str() {
            return Err(reject(
                Reason::TenantMismatch,
                format!(
                    "tenantid {claimed:?} is not the tenant {:?} of the subject",
                    partition.tenant.as_str()
                ),
            ));
        }
    }
    let Some(reg) = registration else {
        return Err(reject(
            Reason::UnknownSource,
            format!(
                "source {:?} is not registered for tenant {:?}",
                partition.source.as_str(),
                partition.tenant.as_str()
            ),
        ));
    };
    // ATP's own admin trail is written by ATP's admin identity on NATS, never through a token.
    if reg.source_id.as_str() == crate::registry::SYSTEM_SOURCE
        && matches!(sub.channel, Channel::Gateway { .. })
    {
        return Err(reject(
            Reason::UnknownSource,
            format!(
                "source {:?} is reserved for ATP's own admin trail",
                crate::registry::SYSTEM_SOURCE
            ),
        ));
    }
    if source != reg.source_uri {
        return Err(reject(
            Reason::SourceMismatch,
            format!(
                "source {source:?} is not {:?}, the URI registered for {:?}",
                reg.source_uri,
                reg.source_id.as_str()
            ),
        ));
    }
    Ok(reg)
}

/// The optional producer `sequence`: a decimal string of at most 20 digits that fits a u64.
fn sequence_of(event: &Map<String, Value>) -> Result<Option<u64>, Rejection> {
    Ok(match event.get("sequence") {
        None => None,
        Some(v) => {
            let s = ext_string(v);
            let ok = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
            Some(s.parse::<u64>().ok().filter(|_| ok).ok_or_else(|| {
                reject(
                    Reason::SchemaValidationFailed,
                    format!("sequence {s:?} is not a decimal string"),
                )
            })?)
        }
    })
}

/// Who the producer is and how it was authenticated: a DSSE signature by a live key of the
/// source, or (without one) the gateway's token, or an unsigned NATS source that allows it.
fn producer_stamp(
    sub: &Submission<'_>,
    event: &Map<String, Value>,
    reg: &SourceRegistration,
    ctx: &Context<'_>,
    data_bytes: &[u8],
) -> Result<ProducerStamp, Rejection> {
    Ok(match event.get("dssematerial") {
        None | Some(Value::Null) => match &sub.channel {
            Channel::Gateway { subject } => match crate::webhook::stamp_of_subject(subject) {
                Some((auth, id)) => ProducerStamp {
                    key_id: Some(id.to_owned()),
                    auth: auth.to_owned(),
                },
                None => ProducerStamp {
                    key_id: None,
                    auth: format!("token:{subject}"),
                },
            },
            Channel::Nats if reg.allow_unsigned => ProducerStamp {
                key_id: None,
                auth: "nats:unsigned".to_owned(),
            },
            Channel::Nats => {
                return Err(reject(
                    Reason::SignatureMissing,
                    "events published on NATS must carry dssematerial",
                ));
            }
        },
        Some(material) => {
            let Value::String(material) = material else {
                return Err(reject(
                    Reason::SignatureInvalid,
                    "dssematerial must be a string",
                ));
            };
            let extensions = signed_extensions(event)?;
            let ext_pairs: Vec<(&str, &str)> = extensions
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let fields = SignedFields {
                id: Some(ctx.id),
                source: Some(ctx.source),
                specversion: Some(ctx.specversion),
                ty: Some(ctx.ty),
                datacontenttype: Some(ctx.datacontenttype),
                dataschema: ctx.dataschema,
                subject: ctx.subject,
                time: Some(ctx.occurred_at),
                data: data_bytes,
                extensions: ext_pairs,
            };
            let expected = dsse::verification_material(&fields);
            let envelope = Envelope::decode(material)
                .map_err(|e| reject(Reason::SignatureInvalid, e.to_string()))?;
            // A signature by a revoked key is refused as such, before trying the live keys.
            if let Some(kid) = envelope.signatures.iter().find_map(|(kid, _)| {
                let kid = kid.as_deref()?;
                reg.key(kid)
                    .filter(|k| k.revoked_at.is_some())
                    .map(|k| k.key_id.clone())
            }) {
                return Err(reject(
                    Reason::KeyRevoked,
                    format!("key {kid:?} is revoked"),
                ));
            }
            let key_id = envelope
                .verify(&expected, |kid| {
                    reg.key(kid)
                        .filter(|k| k.revoked_at.is_none())
                        .and_then(|k| k.verifying_key())
                })
                .map_err(|e| match e {
                    DsseError::UnknownKey(_) => reject(Reason::UnknownKey, e.to_string()),
                    other => reject(Reason::SignatureInvalid, other.to_string()),
                })?;
            let auth = match &sub.channel {
                Channel::Nats => "dsse-ed25519".to_owned(),
                Channel::Gateway { subject } => format!("dsse-ed25519;token:{subject}"),
            };
            ProducerStamp {
                key_id: Some(key_id),
                auth,
            }
        }
    })
}

/// The signed extension attributes, validated per the extension's `signedextattrs` rules, plus
/// ATP's own: `sequence` and `tenantid` must be signed when present.
fn signed_extensions(event: &Map<String, Value>) -> Result<Vec<(String, String)>, Rejection> {
    let list = match event.get("signedextattrs") {
        None => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => s.split(',').map(str::to_owned).collect(),
        Some(_) => {
            return Err(reject(
                Reason::SignatureInvalid,
                "signedextattrs must be a string",
            ));
        }
    };
    let mut out: Vec<(String, String)> = Vec::with_capacity(list.len());
    for name in list {
        let bad = CORE_ATTRIBUTES.contains(&name.as_str())
            || name == "dssematerial"
            || name == "signedextattrs"
            || out.iter().any(|(n, _)| *n == name);
        if bad {
            return Err(reject(
                Reason::SignatureInvalid,
                format!("signedextattrs may not list {name:?}"),
            ));
        }
        let value = event.get(&name).map(ext_string).unwrap_or_default();
        out.push((name, value));
    }
    for must in MUST_SIGN {
        if event.contains_key(must) && !out.iter().any(|(n, _)| n == must) {
            return Err(reject(
                Reason::SignatureInvalid,
                format!("extension {must:?} is present but not signed"),
            ));
        }
    }
    Ok(out)
}

fn check_with_sdk(event: &Map<String, Value>) -> Result<(), Rejection> {
    // The SDK models data itself; the attribute set is what it is asked about here, so data is
    // left out rather than copied.
    let attrs: Map<String, Value> = event
        .iter()
        .filter(|(k, _)| k.as_str() != "data" && k.as_str() != "data_base64")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    serde_json::from_value::<cloudevents::Event>(Value::Object(attrs))
        .map(|_| ())
        .map_err(|e| {
            reject(
                Reason::SchemaValidationFailed,
                format!("not a CloudEvent: {}", value_free(&e.to_string())),
            )
        })
}

/// `data` as `T`, a failure naming the JSON path of the offending member
/// (`data.resource: missing field `id``, `data.outcome: unknown variant …`).
fn data_as<T: serde::de::DeserializeOwned>(data: &Value) -> Result<T, Rejection> {
    serde_path_to_error::deserialize(data).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            "data".to_owned()
        } else {
            format!("data.{path}")
        };
        reject(
            Reason::SchemaValidationFailed,
            format!("{at}: {}", value_free(&e.inner().to_string())),
        )
    })
}

/// A deserialisation error without the value it quotes: rejection details are kept, shown to
/// auditors and logged, and the value may be personal data (CONTRACT §8). serde says
/// "invalid type: string \"ada@example.com\", expected u64"; this says "invalid type: string,
/// expected u64". Field names (`missing field `id``) stay: they are the schema's, not data.
pub fn value_free(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "unknown variant "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let kind = rest
            .split([' ', '`', '"', ','])
            .next()
            .filter(|k| !k.is_empty() && prefix != "unknown variant ")
            .map(|k| format!(" {k}"))
            .unwrap_or_default();
        let expected = rest
            .find(", expected")
            .map(|i| &rest[i..])
            .unwrap_or_default();
        // Drop anything quoted in what is left (an expected variant list is the schema's).
        return format!("{}{kind}{expected}", prefix.trim_end());
    }
    message.to_owned()
}

fn check_data(data: &Value, allow_unknown: bool) -> Result<(), Rejection> {
    if !data.is_object() {
        return Err(reject(
            Reason::SchemaValidationFailed,
            "data must be a JSON object",
        ));
    }
    let facets: AuditFacets = if allow_unknown {
        data_as(data)?
    } else {
        let d: AuditData = data_as(data)?;
        AuditFacets {
            actor: d.actor,
            action: d.action,
            resource: d.resource,
            outcome: d.outcome,
            attributes: d.attributes,
        }
    };
    if let Some((k, _)) = facets
        .attributes
        .iter()
        .flatten()
        .find(|(_, v)| v.is_object() || v.is_array())
    {
        return Err(reject(
            Reason::SchemaValidationFailed,
            format!("data.attributes.{k}: attributes are flat (string, number, boolean or null)"),
        ));
    }
    for (path, v) in [
        ("data.actor.id", &facets.actor.id),
        ("data.action", &facets.action),
        ("data.resource.type", &facets.resource.ty),
        ("data.resource.id", &facets.resource.id),
    ] {
        if v.is_empty() {
            return Err(reject(
                Reason::SchemaValidationFailed,
                format!("{path} must not be empty"),
            ));
        }
    }
    Ok(())
}

/// Reads the audit facets of an event in stored (structured) form, for projections.
pub fn facets_of(event: &Value) -> Option<AuditFacets> {
    match (event.get("data"), event.get("data_base64")) {
        (Some(d), _) => AuditFacets::deserialize(d).ok(),
        (None, Some(Value::String(b64))) => {
            let bytes = STANDARD.decode(b64).ok()?;
            serde_json::from_slice(&bytes).ok()
        }
        _ => None,
    }
}

/// JSON Schema of the audit payload, for producers' engineers and the docs.
pub fn audit_data_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(AuditData)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests;
