/** Why ATP refused an event (CONTRACT §2); the codes are part of ATP's contract. */
export const REASONS = [
  "MALFORMED",
  "SCHEMA_VALIDATION_FAILED",
  "SIGNATURE_MISSING",
  "SIGNATURE_INVALID",
  "UNKNOWN_KEY",
  "KEY_REVOKED",
  "TENANT_MISMATCH",
  "TOO_LARGE",
  "SEQUENCE_REGRESSION",
  "POLICY_DENIED",
  "UNKNOWN_SOURCE",
  "SOURCE_MISMATCH",
  "IDEMPOTENCY_CONFLICT",
  "UNPROCESSABLE",
  "UNMAPPABLE",
] as const;
export type Reason = (typeof REASONS)[number];

export function isReason(code: string): code is Reason {
  return (REASONS as readonly string[]).includes(code);
}

/** The event could not be built or signed; nothing was sent. */
export class BuildError extends Error {
  override name = "BuildError";
}

/** An event's `dssematerial` does not verify. */
export class SignatureError extends Error {
  override name = "SignatureError";
}

/** An event was not sent, or not taken. */
export class PublishError extends Error {
  override name = "PublishError";
}

/** ATP refused the event: sending it again changes nothing; fix what `detail` names. */
export class Rejected extends PublishError {
  override name = "Rejected";
  constructor(
    readonly reason: Reason,
    readonly detail: string,
  ) {
    super(`rejected, ${reason}: ${detail}`);
  }
}

/** The gateway refused the request itself (the token, the body, an answer not known here). */
export class Refused extends PublishError {
  override name = "Refused";
  constructor(
    readonly status: number,
    readonly code: string,
    readonly detail: string,
  ) {
    super(`refused (${status} ${code}): ${detail}`);
  }
}

/** No acknowledgement within the retries: send the same SignedEvent again later. */
export class Unavailable extends PublishError {
  override name = "Unavailable";
}
