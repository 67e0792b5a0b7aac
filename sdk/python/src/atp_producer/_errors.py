"""What can go wrong, typed: ATP's rejection reasons (CONTRACT §2) and a publisher's failures."""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Why ATP refused an event. The codes are part of ATP's contract."""

    MALFORMED = "MALFORMED"
    SCHEMA_VALIDATION_FAILED = "SCHEMA_VALIDATION_FAILED"
    SIGNATURE_MISSING = "SIGNATURE_MISSING"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    KEY_REVOKED = "KEY_REVOKED"
    TENANT_MISMATCH = "TENANT_MISMATCH"
    TOO_LARGE = "TOO_LARGE"
    SEQUENCE_REGRESSION = "SEQUENCE_REGRESSION"
    POLICY_DENIED = "POLICY_DENIED"
    UNKNOWN_SOURCE = "UNKNOWN_SOURCE"
    SOURCE_MISMATCH = "SOURCE_MISMATCH"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    UNPROCESSABLE = "UNPROCESSABLE"
    UNMAPPABLE = "UNMAPPABLE"


class BuildError(ValueError):
    """The event could not be built or signed; nothing was sent."""


class SignatureError(ValueError):
    """A stored or received event's ``dssematerial`` does not verify."""


class PublishError(Exception):
    """An event was not sent, or not taken."""


class Rejected(PublishError):
    """ATP refused the event. Sending it again changes nothing: fix what ``detail`` names."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"rejected, {reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class Refused(PublishError):
    """The gateway refused the request itself (the token, the body, an unknown answer)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"refused ({status} {code}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class Unavailable(PublishError):
    """No acknowledgement within the retries. Send the same SignedEvent again later."""
