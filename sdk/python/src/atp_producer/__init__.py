"""Send audit events to ATP, the Audit Trail Platform, so that they are kept immutable and
provable. Build an :class:`AuditEvent` (or take a ``cloudevents`` event), sign it with your
:class:`Producer`, and send the :class:`SignedEvent` with a :class:`NatsPublisher` (asyncio),
a :class:`BlockingNatsPublisher`, or an :class:`HttpPublisher`. See README.md."""

from ._dsse import verification_material, verify
from ._errors import BuildError, PublishError, Reason, Refused, Rejected, SignatureError, Unavailable
from ._event import AuditEvent, Producer, Sequencer, SignedEvent, Signer, Source
from ._http import Accepted, HttpPublisher, Outcome, Recorded
from ._nats import BlockingNatsPublisher, NatsPublisher, Receipt
from ._retry import Retry

__all__ = [
    "Accepted",
    "AuditEvent",
    "BlockingNatsPublisher",
    "BuildError",
    "HttpPublisher",
    "NatsPublisher",
    "Outcome",
    "Producer",
    "PublishError",
    "Reason",
    "Receipt",
    "Recorded",
    "Refused",
    "Rejected",
    "Retry",
    "Sequencer",
    "SignatureError",
    "SignedEvent",
    "Signer",
    "Source",
    "Unavailable",
    "verification_material",
    "verify",
]
