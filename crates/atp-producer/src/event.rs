//! Building and signing events: [`AuditEvent`] in plain fields or a `cloudevents` [`Event`],
//! signed by a [`Producer`] into a [`SignedEvent`] whose bytes never change again.

use std::path::Path;

use atp_core::{PartitionKey, SourceId, TenantId};
use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::{AttributesReader, Data, Event};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use serde_json::{Map, Value};

use crate::sequence::Sequencer;

/// Why an event could not be built or signed. Nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid tenant or source id: {0}")]
    Name(String),
    #[error("invalid event: {0}")]
    Invalid(String),
    #[error("the producer key: {0}")]
    Key(String),
    #[error("the sequence store: {0}")]
    Sequence(#[from] crate::sequence::SequenceError),
}

/// The partition a producer writes to: its tenant, its source id, and the source URI that ATP
/// registered for it (the CloudEvents `source` of every event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    partition: PartitionKey,
    uri: String,
}

impl Source {
    /// `tenant` and `source` as registered with ATP (`atp producer add` prints all three).
    pub fn new(tenant: &str, source: &str, uri: &str) -> Result<Source, BuildError> {
        let tenant = TenantId::new(tenant).map_err(|e| BuildError::Name(e.to_string()))?;
        let source = SourceId::new(source).map_err(|e| BuildError::Name(e.to_string()))?;
        if uri.is_empty() {
            return Err(BuildError::Name("the source URI is empty".to_owned()));
        }
        Ok(Source {
            partition: PartitionKey::new(tenant, source),
            uri: uri.to_owned(),
        })
    }

    pub fn tenant(&self) -> &str {
        self.partition.tenant.as_str()
    }

    pub fn source(&self) -> &str {
        self.partition.source.as_str()
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn partition(&self) -> &PartitionKey {
        &self.partition
    }
}

/// The producer's Ed25519 signing key and the key id ATP registered for it.
pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.key_id)
    }
}

impl Signer {
    pub fn new(key: SigningKey, key_id: impl Into<String>) -> Signer {
        Signer {
            key,
            key_id: key_id.into(),
        }
    }

    /// A key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as `openssl genpkey -algorithm
    /// ed25519` and `atp producer add --generate-key` write it.
    pub fn from_pkcs8_pem(pem: &str, key_id: impl Into<String>) -> Result<Signer, BuildError> {
        let key = SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| BuildError::Key(format!("not an Ed25519 PKCS#8 PEM key: {e}")))?;
        Ok(Signer::new(key, key_id))
    }

    /// [`Signer::from_pkcs8_pem`] of a file.
    pub fn read_pem_file(path: &Path, key_id: impl Into<String>) -> Result<Signer, BuildError> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| BuildError::Key(format!("reading {}: {e}", path.display())))?;
        Signer::from_pkcs8_pem(&pem, key_id)
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// An audit event in plain fields: who (`actor`) did what (`action`) to which `resource`,
/// with flat `attributes`. [`Producer::sign`] turns it into a signed CloudEvent.
///
/// ```
/// use atp_producer::AuditEvent;
///
/// let event = AuditEvent::new("com.acme.contact.updated")
///     .actor("user-42", "user")
///     .action("UPDATE")
///     .resource("Contact", "c-1001")
///     .attribute("field", "email")
///     .attribute("ip", "192.0.2.7");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    ty: String,
    id: Option<String>,
    time: Option<DateTime<Utc>>,
    subject: Option<String>,
    sequence: Option<u64>,
    actor: (String, String),
    action: String,
    resource: (String, String),
    outcome: Option<String>,
    attributes: Map<String, Value>,
}

impl AuditEvent {
    /// An event of CloudEvents `type` `ty` (reverse-DNS, e.g. `com.acme.order.updated`).
    /// Actor, action and resource must be set before it is signed.
    pub fn new(ty: impl Into<String>) -> AuditEvent {
        AuditEvent {
            ty: ty.into(),
            id: None,
            time: None,
            subject: None,
            sequence: None,
            actor: (String::new(), "user".to_owned()),
            action: String::new(),
            resource: (String::new(), String::new()),
            outcome: None,
            attributes: Map::new(),
        }
    }

    /// The event's id, unique per source (at most 128 characters). ATP records one event per
    /// id: sending it again answers the first record. Default: a new ULID when it is signed.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// When it happened (`occurredAt`). Default: when it is signed.
    pub fn time(mut self, time: DateTime<Utc>) -> Self {
        self.time = Some(time);
        self
    }

    /// The CloudEvents `subject`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The event's `sequence`: strictly increasing per source, such as an outbox row's order.
    /// ATP then never records an event at or below a sequence it has recorded. A
    /// [`Producer`] with a [`Sequencer`] sets it for events that have none.
    pub fn sequence(mut self, sequence: u64) -> Self {
        self.sequence = Some(sequence);
        self
    }

    /// Who did it, and what kind of actor that is (`user`, `service`, …).
    pub fn actor(mut self, id: impl Into<String>, kind: impl Into<String>) -> Self {
        self.actor = (id.into(), kind.into());
        self
    }

    /// What was done: `CREATE`, `UPDATE`, `DELETE`, `READ`, `LOGIN`, …
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = action.into();
        self
    }

    /// What it was done to.
    pub fn resource(mut self, kind: impl Into<String>, id: impl Into<String>) -> Self {
        self.resource = (kind.into(), id.into());
        self
    }

    /// `success` or `failure`.
    pub fn outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = Some(outcome.into());
        self
    }

    /// One attribute (a string, number or boolean: attributes are flat).
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    fn into_cloudevent(
        self,
        source_uri: &str,
        now: DateTime<Utc>,
    ) -> Result<Map<String, Value>, BuildError> {
        let missing = |what: &str| BuildError::Invalid(format!("no {what}"));
        if self.actor.0.is_empty() {
            return Err(missing("actor"));
        }
        if self.action.is_empty() {
            return Err(missing("action"));
        }
        if self.resource.0.is_empty() || self.resource.1.is_empty() {
            return Err(missing("resource"));
        }
        if let Some((name, _)) = self
            .attributes
            .iter()
            .find(|(_, v)| v.is_object() || v.is_array())
        {
            return Err(BuildError::Invalid(format!(
                "attribute {name:?} is not a string, number, boolean or null (attributes are flat)"
            )));
        }
        let mut data = Map::new();
        data.insert(
            "actor".to_owned(),
            serde_json::json!({"id": self.actor.0, "type": self.actor.1}),
        );
        data.insert("action".to_owned(), Value::String(self.action));
        data.insert(
            "resource".to_owned(),
            serde_json::json!({"type": self.resource.0, "id": self.resource.1}),
        );
        if let Some(o) = self.outcome {
            data.insert("outcome".to_owned(), Value::String(o));
        }
        data.insert("attributes".to_owned(), Value::Object(self.attributes));
        let mut ev = Map::new();
        ev.insert("specversion".to_owned(), "1.0".into());
        ev.insert(
            "id".to_owned(),
            self.id
                .unwrap_or_else(|| ulid::Ulid::generate().to_string())
                .into(),
        );
        ev.insert("source".to_owned(), source_uri.into());
        ev.insert("type".to_owned(), self.ty.into());
        ev.insert(
            "time".to_owned(),
            self.time
                .unwrap_or(now)
                .to_rfc3339_opts(SecondsFormat::Millis, true)
                .into(),
        );
        ev.insert("datacontenttype".to_owned(), "application/json".into());
        if let Some(s) = self.subject {
            ev.insert("subject".to_owned(), s.into());
        }
        if let Some(seq) = self.sequence {
            ev.insert("sequence".to_owned(), seq.to_string().into());
        }
        ev.insert("data".to_owned(), Value::Object(data));
        Ok(ev)
    }
}

/// A signed event, ready to send as often as it takes: its bytes are fixed, so every retry
/// is the same submission and ATP records it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEvent {
    id: String,
    idempotency_key: String,
    sequence: Option<u64>,
    body: Vec<u8>,
}

impl SignedEvent {
    /// The CloudEvents `id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `<tenant>:<source>:<id>`: what ATP recognises repeats by.
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }

    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    /// The structured-mode CloudEvent (`application/cloudevents+json`), as sent.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// A producer: its [`Source`], its [`Signer`], and optionally a [`Sequencer`] that numbers
/// its events. It signs; a publisher ([`crate::NatsPublisher`], [`crate::HttpPublisher`])
/// sends.
#[derive(Debug)]
pub struct Producer {
    source: Source,
    signer: Signer,
    sequencer: Option<Sequencer>,
}

impl Producer {
    pub fn new(source: Source, signer: Signer) -> Producer {
        Producer {
            source,
            signer,
            sequencer: None,
        }
    }

    /// Numbers every event that has no `sequence` of its own, for exactly-once per source:
    /// ATP never records an event whose sequence is not above the last it recorded, so an
    /// event re-sent after any failure is recorded once.
    pub fn with_sequencer(mut self, sequencer: Sequencer) -> Producer {
        self.sequencer = Some(sequencer);
        self
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Signs `event`: CloudEvents attributes from the fields and the source, then the
    /// `dssematerial` signature (CONTRACT §2).
    pub fn sign(&self, event: AuditEvent) -> Result<SignedEvent, BuildError> {
        let ev = event.into_cloudevent(&self.source.uri, Utc::now())?;
        self.sign_map(ev)
    }

    /// Signs a `cloudevents-sdk` event with JSON data. Its `source` must be this producer's
    /// source URI; its `data` the audit fields (`actor`, `action`, `resource`, …).
    pub fn sign_cloudevent(&self, event: &Event) -> Result<SignedEvent, BuildError> {
        if event.source().as_str() != self.source.uri {
            return Err(BuildError::Invalid(format!(
                "source {:?} is not this producer's {:?}",
                event.source().as_str(),
                self.source.uri
            )));
        }
        let data = match event.data() {
            Some(Data::Json(v)) => v.clone(),
            Some(Data::String(s)) => serde_json::from_str(s)
                .map_err(|e| BuildError::Invalid(format!("data is not JSON: {e}")))?,
            Some(Data::Binary(b)) => serde_json::from_slice(b)
                .map_err(|e| BuildError::Invalid(format!("data is not JSON: {e}")))?,
            None => return Err(BuildError::Invalid("no data".to_owned())),
        };
        let mut ev = Map::new();
        ev.insert("specversion".to_owned(), "1.0".into());
        ev.insert("id".to_owned(), event.id().into());
        ev.insert("source".to_owned(), event.source().as_str().into());
        ev.insert("type".to_owned(), event.ty().into());
        ev.insert(
            "time".to_owned(),
            event
                .time()
                .copied()
                .unwrap_or_else(Utc::now)
                .to_rfc3339_opts(SecondsFormat::Millis, true)
                .into(),
        );
        ev.insert("datacontenttype".to_owned(), "application/json".into());
        if let Some(s) = event.subject() {
            ev.insert("subject".to_owned(), s.into());
        }
        if let Some(s) = event.dataschema() {
            ev.insert("dataschema".to_owned(), s.as_str().into());
        }
        for (name, value) in event.iter_extensions() {
            ev.insert(name.to_owned(), value.to_string().into());
        }
        ev.insert("data".to_owned(), data);
        self.sign_map(ev)
    }

    fn sign_map(&self, mut ev: Map<String, Value>) -> Result<SignedEvent, BuildError> {
        let sequence = match ev.get("sequence") {
            Some(Value::String(s)) => Some(s.parse::<u64>().map_err(|_| {
                BuildError::Invalid(format!("sequence {s:?} is not a decimal integer"))
            })?),
            Some(_) => return Err(BuildError::Invalid("sequence is not a string".to_owned())),
            None => match &self.sequencer {
                Some(s) => {
                    let n = s.next()?;
                    ev.insert("sequence".to_owned(), n.to_string().into());
                    Some(n)
                }
                None => None,
            },
        };
        if let Some(t) = ev.get("tenantid")
            && t.as_str() != Some(self.source.tenant())
        {
            return Err(BuildError::Invalid(format!(
                "tenantid {t} is not this producer's tenant"
            )));
        }
        let id = match ev.get("id") {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id.clone(),
            _ => {
                return Err(BuildError::Invalid(
                    "id must be 1 to 128 characters".to_owned(),
                ));
            }
        };
        atp_core::producer::sign_structured(&mut ev, &self.signer.key, &self.signer.key_id)
            .map_err(|e| BuildError::Invalid(format!("data is not I-JSON: {e}")))?;
        let body = serde_json::to_vec(&ev).map_err(|e| BuildError::Invalid(e.to_string()))?;
        Ok(SignedEvent {
            idempotency_key: format!("{}:{}:{id}", self.source.tenant(), self.source.source()),
            id,
            sequence,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atp_core::event::{Channel, Submission};
    use atp_core::registry::{ProducerKey, SourceRegistration};

    fn producer() -> Producer {
        Producer::new(
            Source::new("acme", "crm", "https://crm.acme.example").unwrap(),
            Signer::new(SigningKey::from_bytes(&[3; 32]), "crm-1"),
        )
    }

    fn event() -> AuditEvent {
        AuditEvent::new("com.acme.contact.updated")
            .actor("user-42", "user")
            .action("UPDATE")
            .resource("Contact", "c-1")
            .attribute("field", "email")
    }

    /// What ATP's ingest decides for these bytes, with the producer's key registered.
    fn admitted(signed: &SignedEvent) -> Result<atp_core::event::Admitted, atp_core::Rejection> {
        let p = producer();
        let mut reg: SourceRegistration = serde_json::from_value(serde_json::json!({
            "tenantId": "acme", "sourceId": "crm", "sourceUri": "https://crm.acme.example"
        }))
        .unwrap();
        reg.keys.push(ProducerKey::new(
            "crm-1",
            SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes(),
            Utc::now(),
        ));
        let sub = Submission {
            body: signed.body(),
            content_type: Some("application/cloudevents+json"),
            ce_headers: Vec::new(),
            repeated: Vec::new(),
            unmappable: None,
            channel: Channel::Nats,
        };
        atp_core::event::admit(p.source().partition(), &sub, Some(&reg))
    }

    #[test]
    fn what_it_signs_is_what_atp_admits() {
        let signed = producer().sign(event().id("e-1")).unwrap();
        assert_eq!(signed.id(), "e-1");
        assert_eq!(signed.idempotency_key(), "acme:crm:e-1");
        admitted(&signed).expect("ATP admits the SDK's event");
        // One byte of it changed, and it is not.
        let mut tampered = signed.clone();
        let at = tampered
            .body
            .windows(5)
            .position(|w| w == b"email")
            .unwrap();
        tampered.body[at] = b'E';
        let refused = admitted(&tampered).unwrap_err();
        assert_eq!(refused.reason, atp_core::Reason::SignatureInvalid);
    }

    #[test]
    fn a_sequencer_numbers_the_events_and_the_number_is_signed() {
        let p = producer().with_sequencer(Sequencer::starting_after(9));
        let a = p.sign(event()).unwrap();
        let b = p.sign(event()).unwrap();
        assert_eq!((a.sequence(), b.sequence()), (Some(10), Some(11)));
        let body: Value = serde_json::from_slice(a.body()).unwrap();
        assert_eq!(body["sequence"], "10");
        assert_eq!(body["signedextattrs"], "sequence");
        admitted(&a).expect("a numbered event is admitted");
        // An event's own sequence wins over the sequencer's.
        assert_eq!(p.sign(event().sequence(3)).unwrap().sequence(), Some(3));
        // Each sign is a new id: a retry must resend the SignedEvent, not sign again.
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn an_incomplete_or_nested_event_is_refused_before_anything_is_sent() {
        let p = producer();
        for (ev, what) in [
            (AuditEvent::new("t").action("A").resource("R", "1"), "actor"),
            (
                AuditEvent::new("t").actor("a", "user").resource("R", "1"),
                "action",
            ),
            (
                AuditEvent::new("t").actor("a", "user").action("A"),
                "resource",
            ),
            (
                event().attribute("nested", serde_json::json!({"a": 1})),
                "flat",
            ),
            (event().id(""), "id"),
            (event().id("x".repeat(129)), "id"),
        ] {
            let e = p.sign(ev).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
        }
        assert!(Source::new("acme", "crm", "").is_err());
        assert!(Source::new("ACME", "crm", "u").is_err());
    }
}
