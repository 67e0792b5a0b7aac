//! Header names ATP sets on its own messages, and [`Headers`], the one fallible way ATP writes
//! headers. Standard NATS headers come from `async_nats::header`.

use async_nats::HeaderMap;
use async_nats::header::HeaderValue;

/// On a ledger or rejected message: the ATP_INGRESS sequence it answers.
pub const INGRESS_SEQ: &str = "Atp-Ingress-Seq";
/// On a ledger message: the partition's producer-sequence high-water mark after this record.
pub const SEQ_HWM: &str = "Atp-Seq-Hwm";
/// On an ingress message forwarded by the gateway: the authenticated token subject.
pub const GATEWAY_SUBJECT: &str = "Atp-Gateway-Subject";
/// On an ingress message forwarded by the gateway: MAC proving the gateway wrote it.
pub const GATEWAY_MAC: &str = "Atp-Gateway-Mac";
/// On a ledger message: the event's CloudEvents id (so tails can be read without parsing).
pub const EVENT_ID: &str = "Atp-Event-Id";
pub const CONTENT_TYPE: &str = "Content-Type";
/// The content type of a structured-mode CloudEvent: what every submission ATP itself
/// publishes is.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
/// W3C Trace Context, as a producer or the gateway set it on an ingress message; ingest copies
/// both onto the ledger or rejected message it writes for it.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const CE_PREFIX: &str = "ce-";
/// JetStream's own headers, by name, for [`Headers`].
pub const MSG_ID: &str = "Nats-Msg-Id";
pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
pub const BATCH_ID: &str = "Nats-Batch-Id";
pub const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
pub const BATCH_COMMIT: &str = "Nats-Batch-Commit";

/// Longest header value ATP writes. NATS allows more, but nothing ATP writes needs more than a
/// traceparent, a tracestate (512 by W3C), an id (128) or a token subject; 4 KiB bounds what a
/// crafted value can add to every message copied from it.
pub const MAX_VALUE_LEN: usize = 4096;

/// A value ATP refused to write into a header: it came from outside and would break or forge
/// header lines. Callers turn this into a rejection (input) or an error (their own data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header {name} cannot carry this value: {why}")]
pub struct BadHeader {
    pub name: &'static str,
    pub why: &'static str,
}

/// Headers ATP writes, built fallibly.
///
/// `async_nats::HeaderMap::insert` panics on a value holding `\r` or `\n`, which made one crafted
/// CloudEvents id halt ingest for every tenant. Every header ATP writes goes through here
/// instead (clippy's `disallowed-methods` bans the panicking inserts elsewhere): values from
/// outside are checked ([`Headers::text`]), numbers and constants cannot fail.
#[derive(Debug, Clone, Default)]
pub struct Headers(HeaderMap);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from headers already built (a message being re-sent).
    pub fn from_map(map: HeaderMap) -> Self {
        Self(map)
    }

    /// A value that came from outside ATP (an id, a token subject, a trace state): refused when
    /// it holds any control character or is longer than [`MAX_VALUE_LEN`].
    pub fn text(&mut self, name: &'static str, value: &str) -> Result<&mut Self, BadHeader> {
        check(name, value)?;
        let v: HeaderValue = value.parse().map_err(|_| BadHeader {
            name,
            why: "a line break",
        })?;
        self.set(name, v);
        Ok(self)
    }

    /// A decimal number: cannot fail.
    pub fn num(&mut self, name: &'static str, value: u64) -> &mut Self {
        self.set(name, HeaderValue::from(value));
        self
    }

    /// A value fixed in ATP's code. Checked like any other, but a bad constant writes an empty
    /// value instead of panicking (a unit test checks every constant ATP uses).
    pub fn fixed(&mut self, name: &'static str, value: &'static str) -> &mut Self {
        let v = match check(name, value) {
            Ok(()) => value.parse().unwrap_or_default(),
            Err(_) => HeaderValue::default(),
        };
        self.set(name, v);
        self
    }

    #[allow(clippy::disallowed_methods)] // the one place the panicking insert is reached, with a checked value
    fn set(&mut self, name: &'static str, value: HeaderValue) {
        match name.parse::<async_nats::header::HeaderName>() {
            Ok(n) => self.0.insert(n, value),
            // Names are ATP's constants; a bad one is a defect that a unit test catches.
            Err(_) => tracing::error!(header = name, "invalid header name in ATP's code"),
        }
    }

    pub fn into_map(self) -> HeaderMap {
        self.0
    }

    pub fn map(&self) -> &HeaderMap {
        &self.0
    }
}

/// The headers of one submission on `atp.ingress.<tenant>.<source>`, as every publisher in ATP
/// writes them (the gateway, the admin trail, `atp publish`, the benchmarks, the test harness),
/// so that what ingest reads is written in one place: a structured-mode CloudEvent, plus what
/// the publisher has to add. Values that came from outside are checked as [`Headers::text`]
/// checks them.
///
/// No `Nats-Msg-Id` unless asked for: JetStream's duplicate window spans the whole ingress
/// stream, so such an id is a key any tenant could take first, and ingest recognises repeats per
/// partition by itself (ADR 0013).
#[derive(Debug, Clone)]
pub struct IngressHeaders(Headers);

impl IngressHeaders {
    /// A structured-mode CloudEvent (`Content-Type: application/cloudevents+json`).
    pub fn structured() -> Self {
        let mut h = Headers::new();
        h.fixed(CONTENT_TYPE, CLOUDEVENTS_JSON);
        Self(h)
    }

    /// The gateway's attestation: the authenticated token subject, and the gateway's signature
    /// over the ingress subject, that token subject and the body
    /// (`atp_core::attestation::sign`). Ingest refuses a submission that carries one of the two
    /// without the other, or a signature that does not verify.
    pub fn attested(
        &mut self,
        token_subject: &str,
        signature: &[u8],
    ) -> Result<&mut Self, BadHeader> {
        use base64::Engine as _;
        let signature = base64::engine::general_purpose::STANDARD.encode(signature);
        self.0
            .text(GATEWAY_SUBJECT, token_subject)?
            .text(GATEWAY_MAC, &signature)?;
        Ok(self)
    }

    /// The W3C `traceparent` the submission's trace continues from.
    pub fn traceparent(&mut self, traceparent: &str) -> Result<&mut Self, BadHeader> {
        self.0.text(TRACEPARENT, traceparent)?;
        Ok(self)
    }

    /// The W3C `tracestate` that goes with the `traceparent`.
    pub fn tracestate(&mut self, tracestate: &str) -> Result<&mut Self, BadHeader> {
        self.0.text(TRACESTATE, tracestate)?;
        Ok(self)
    }

    /// A JetStream message id, for a publisher that retries through an outage and wants a
    /// retry of a stored message not stored twice (see the type's note on why ATP's own
    /// submissions through the gateway carry none).
    pub fn msg_id(&mut self, id: &str) -> Result<&mut Self, BadHeader> {
        self.0.text(MSG_ID, id)?;
        Ok(self)
    }

    /// A message a producer's relay could not map onto an event, forwarded as received so that
    /// ATP keeps it as an `UNMAPPABLE` rejection; `why` says what was missing
    /// (`atp_core::event::UNMAPPABLE_HEADER`).
    pub fn unmappable(&mut self, why: &str) -> Result<&mut Self, BadHeader> {
        self.0.text(atp_core::event::UNMAPPABLE_HEADER, why)?;
        Ok(self)
    }

    pub fn into_map(self) -> HeaderMap {
        self.0.into_map()
    }
}

/// Whether [`Headers::text`] would write `value`, for a caller that must know before it
/// commits to writing it.
pub fn check(name: &'static str, value: &str) -> Result<(), BadHeader> {
    if value.len() > MAX_VALUE_LEN {
        return Err(BadHeader {
            name,
            why: "longer than 4096 bytes",
        });
    }
    if value.chars().any(char::is_control) {
        return Err(BadHeader {
            name,
            why: "a control character",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_and_fixed_value_atp_writes_is_valid() {
        for name in [
            INGRESS_SEQ,
            SEQ_HWM,
            GATEWAY_SUBJECT,
            GATEWAY_MAC,
            EVENT_ID,
            CONTENT_TYPE,
            TRACEPARENT,
            TRACESTATE,
            MSG_ID,
            EXPECTED_LAST_SUBJECT_SEQUENCE,
            BATCH_ID,
            BATCH_SEQUENCE,
            BATCH_COMMIT,
        ] {
            assert!(
                name.parse::<async_nats::header::HeaderName>().is_ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn jetstream_names_are_the_clients_own() {
        use async_nats::header as nats;
        for (ours, theirs) in [
            (MSG_ID, nats::NATS_MESSAGE_ID),
            (
                EXPECTED_LAST_SUBJECT_SEQUENCE,
                nats::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            ),
            (BATCH_ID, nats::NATS_BATCH_ID),
            (BATCH_SEQUENCE, nats::NATS_BATCH_SEQUENCE),
            (BATCH_COMMIT, nats::NATS_BATCH_COMMIT),
        ] {
            assert_eq!(ours.parse::<nats::HeaderName>().unwrap(), theirs);
        }
    }

    #[test]
    fn outside_values_with_control_characters_are_refused_not_panicked_on() {
        let mut h = Headers::new();
        for bad in ["a\nb", "a\rb", "a\u{0}b", "a\u{7f}b", "a\u{85}b", "a\tb"] {
            let e = h.text(EVENT_ID, bad).unwrap_err();
            assert_eq!(e.name, EVENT_ID);
        }
        assert!(h.text(EVENT_ID, &"x".repeat(MAX_VALUE_LEN + 1)).is_err());
        h.text(EVENT_ID, "order-4711 ✓").unwrap();
        assert_eq!(h.map().get(EVENT_ID).unwrap().as_str(), "order-4711 ✓");
    }

    #[test]
    fn a_submission_carries_what_its_publisher_adds_and_nothing_else() {
        let plain = IngressHeaders::structured().into_map();
        assert_eq!(plain.get(CONTENT_TYPE).unwrap().as_str(), CLOUDEVENTS_JSON);
        assert_eq!(plain.iter().count(), 1, "{plain:?}");

        let mut h = IngressHeaders::structured();
        h.attested("svc-crm", &[0xfb; 4])
            .unwrap()
            .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .unwrap()
            .tracestate("vendor=1")
            .unwrap()
            .msg_id("acme.crm:e1")
            .unwrap();
        let m = h.into_map();
        assert_eq!(m.get(GATEWAY_SUBJECT).unwrap().as_str(), "svc-crm");
        assert_eq!(m.get(GATEWAY_MAC).unwrap().as_str(), "+/v7+w==");
        assert_eq!(m.get(TRACESTATE).unwrap().as_str(), "vendor=1");
        assert_eq!(m.get(MSG_ID).unwrap().as_str(), "acme.crm:e1");
        assert_eq!(m.get(CONTENT_TYPE).unwrap().as_str(), CLOUDEVENTS_JSON);
    }

    #[test]
    fn a_submission_refuses_values_that_would_break_its_headers() {
        let mut h = IngressHeaders::structured();
        assert_eq!(
            h.attested("svc\r\nAtp-Gateway-Mac: x", b"sig")
                .unwrap_err()
                .name,
            GATEWAY_SUBJECT
        );
        assert_eq!(h.tracestate("a\nb").unwrap_err().name, TRACESTATE);
        assert!(h.into_map().get(GATEWAY_MAC).is_none());
    }

    #[test]
    fn numbers_and_constants_are_written() {
        let mut h = Headers::new();
        h.num(INGRESS_SEQ, 42)
            .fixed(CONTENT_TYPE, "application/json");
        let m = h.into_map();
        assert_eq!(m.get(INGRESS_SEQ).unwrap().as_str(), "42");
        assert_eq!(m.get(CONTENT_TYPE).unwrap().as_str(), "application/json");
    }
}
