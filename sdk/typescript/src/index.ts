/**
 * Send audit events to ATP, the Audit Trail Platform, so that they are kept immutable and
 * provable. Build an `AuditEvent` (or take a `cloudevents` event), sign it with your
 * `Producer`, and send the `SignedEvent` with a `NatsPublisher` or an `HttpPublisher`.
 * See README.md.
 */
export { MUST_SIGN, PAYLOAD_TYPE, normaliseTime, privateKeyFromSeed, verificationMaterial, verify } from "./dsse.js";
export { BuildError, PublishError, REASONS, Refused, Rejected, SignatureError, Unavailable, isReason, type Reason } from "./errors.js";
export { Producer, Sequencer, Signer, Source, newId, type AuditEvent, type Scalar, type SignedEvent } from "./event.js";
export { HttpPublisher, refusal, type Accepted, type HttpOptions, type Outcome, type Recorded } from "./http.js";
export { NatsPublisher, type Receipt } from "./nats.js";
export { DEFAULT_RETRY, backoffMs, type Retry } from "./retry.js";
