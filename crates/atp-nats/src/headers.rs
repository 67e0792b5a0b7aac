//! Header names ATP sets on its own messages. Standard NATS headers come from
//! `async_nats::header`.

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
/// W3C Trace Context, as a producer or the gateway set it on an ingress message; ingest copies
/// both onto the ledger or rejected message it writes for it.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const CE_PREFIX: &str = "ce-";
