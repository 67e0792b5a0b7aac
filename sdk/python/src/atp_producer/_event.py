"""Building and signing events: an :class:`AuditEvent` in plain fields, or a ``cloudevents``
event, signed by a :class:`Producer` into a :class:`SignedEvent` whose bytes never change."""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from . import _dsse
from ._errors import BuildError

_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SOURCE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id() -> str:
    """A ULID: 48 bits of milliseconds, 80 random bits, Crockford base32."""
    n = (int(_time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in reversed(range(26)))


def _utc_millis(t: datetime) -> str:
    if t.tzinfo is None:
        raise BuildError("time must be timezone-aware")
    t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{t.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Source:
    """The partition a producer writes to: tenant, source id, and the registered source URI."""

    tenant: str
    source: str
    uri: str

    def __post_init__(self) -> None:
        if not _TENANT.match(self.tenant):
            raise BuildError(f"invalid tenant id {self.tenant!r}")
        if not _SOURCE.match(self.source):
            raise BuildError(f"invalid source id {self.source!r}")
        if not self.uri:
            raise BuildError("the source URI is empty")

    @property
    def subject(self) -> str:
        """The NATS subject the producer publishes to."""
        return f"atp.ingress.{self.tenant}.{self.source}"


class Signer:
    """The producer's Ed25519 key and the key id ATP registered for it."""

    def __init__(self, key: Ed25519PrivateKey, key_id: str) -> None:
        self.key = key
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"Signer({self.key_id!r})"

    @classmethod
    def from_pem(cls, pem: bytes, key_id: str) -> Signer:
        """A PKCS#8 PEM key, as ``openssl genpkey -algorithm ed25519`` and
        ``atp producer add --generate-key`` write it."""
        key = load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise BuildError("not an Ed25519 private key")
        return cls(key, key_id)

    @classmethod
    def read_pem_file(cls, path: str | os.PathLike[str], key_id: str) -> Signer:
        return cls.from_pem(Path(path).read_bytes(), key_id)


@dataclass
class AuditEvent:
    """An audit event in plain fields: who (``actor_id``) did what (``action``) to which
    resource, with flat ``attributes``."""

    type: str
    actor_id: str
    action: str
    resource_type: str
    resource_id: str
    actor_type: str = "user"
    outcome: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    #: Unique per source; ATP records one event per id. Default: a new ULID when signed.
    id: str | None = None
    #: When it happened. Default: when it is signed.
    time: datetime | None = None
    subject: str | None = None
    #: Strictly increasing per source (an outbox row's order, say): exactly-once.
    sequence: int | None = None

    def to_cloudevent_dict(self, source_uri: str) -> dict[str, Any]:
        for name in ("actor_id", "action", "resource_type", "resource_id"):
            if not getattr(self, name):
                raise BuildError(f"no {name.split('_')[0]}")
        for name, value in self.attributes.items():
            if isinstance(value, (dict, list)):
                raise BuildError(
                    f"attribute {name!r} is not a string, number, boolean or null "
                    "(attributes are flat)"
                )
        data: dict[str, Any] = {
            "actor": {"id": self.actor_id, "type": self.actor_type},
            "action": self.action,
            "resource": {"type": self.resource_type, "id": self.resource_id},
        }
        if self.outcome is not None:
            data["outcome"] = self.outcome
        data["attributes"] = dict(self.attributes)
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id if self.id is not None else new_id(),
            "source": source_uri,
            "type": self.type,
            "time": _utc_millis(self.time or datetime.now(timezone.utc)),
            "datacontenttype": "application/json",
        }
        if self.subject is not None:
            event["subject"] = self.subject
        if self.sequence is not None:
            event["sequence"] = str(self.sequence)
        event["data"] = data
        return event


@dataclass(frozen=True)
class SignedEvent:
    """A signed event, ready to send as often as it takes: its bytes are fixed, so every retry
    is the same submission and ATP records it once."""

    id: str
    idempotency_key: str
    sequence: int | None
    #: The structured-mode CloudEvent (``application/cloudevents+json``), as sent.
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    def to_cloudevent(self) -> Any:
        """The event as a ``cloudevents`` v1 ``CloudEvent``."""
        from cloudevents.core.v1.event import CloudEvent

        attrs = self.event
        data = attrs.pop("data", None)
        attrs["time"] = datetime.fromisoformat(attrs["time"].replace("Z", "+00:00"))
        return CloudEvent(attrs, data)


_BLOCK = 1024


class Sequencer:
    """Numbers a producer's events. In memory (:meth:`starting_after`) the caller says where it
    was; with a file (:meth:`file`) a restarted producer goes on above every number it handed
    out: the file holds the end of a block reserved with one durable write, so a crash skips
    at most the rest of a block (gaps are allowed, going back is not)."""

    def __init__(self, next_value: int, path: Path | None) -> None:
        self._next = next_value
        self._path = path
        self._reserved = next_value
        self._lock = threading.Lock()

    @classmethod
    def starting_after(cls, last: int) -> Sequencer:
        return cls(last + 1, None)

    @classmethod
    def file(cls, path: str | os.PathLike[str]) -> Sequencer:
        p = Path(path)
        try:
            text = p.read_text().strip()
        except FileNotFoundError:
            return cls(1, p)
        if not text.isdigit():
            raise BuildError(f"{p} does not hold a sequence")
        return cls(int(text), p)

    def next(self) -> int:
        with self._lock:
            n = self._next
            if self._path is not None and n >= self._reserved:
                end = n + _BLOCK
                tmp = self._path.with_suffix(".tmp")
                with open(tmp, "w") as f:
                    f.write(f"{end}\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._path)
                dir_fd = os.open(self._path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
                self._reserved = end
            if n >= 2**64 - 1:
                raise BuildError("the sequence is exhausted")
            self._next = n + 1
            return n


class Producer:
    """A producer: its :class:`Source`, its :class:`Signer`, and optionally a
    :class:`Sequencer`. It signs; a publisher sends."""

    def __init__(self, source: Source, signer: Signer, sequencer: Sequencer | None = None) -> None:
        self.source = source
        self.signer = signer
        self.sequencer = sequencer

    def sign(self, event: AuditEvent) -> SignedEvent:
        return self._sign(event.to_cloudevent_dict(self.source.uri))

    def sign_cloudevent(self, event: Any) -> SignedEvent:
        """Signs a ``cloudevents`` v1 event whose data is the audit fields (a dict or JSON)."""
        if event.get_source() != self.source.uri:
            raise BuildError(
                f"source {event.get_source()!r} is not this producer's {self.source.uri!r}"
            )
        data = event.get_data()
        if isinstance(data, (str, bytes)):
            data = json.loads(data)
        if not isinstance(data, Mapping):
            raise BuildError("data is not a JSON object")
        t = event.get_time()
        out: dict[str, Any] = {
            "specversion": "1.0",
            "id": event.get_id(),
            "source": event.get_source(),
            "type": event.get_type(),
            "time": _utc_millis(t or datetime.now(timezone.utc)),
            "datacontenttype": "application/json",
        }
        for name in ("subject", "dataschema"):
            value = event.get_attributes().get(name)
            if value is not None:
                out[name] = str(value)
        core = {"specversion", "id", "source", "type", "time", "datacontenttype", "subject",
                "dataschema"}
        for name, value in event.get_attributes().items():
            if name not in core:
                out[name] = value if isinstance(value, str) else str(value)
        out["data"] = dict(data)
        return self._sign(out)

    def _sign(self, event: dict[str, Any]) -> SignedEvent:
        seq: int | None
        if "sequence" in event:
            try:
                seq = int(event["sequence"])
            except ValueError as e:
                raise BuildError(f"sequence {event['sequence']!r} is not a decimal integer") from e
        elif self.sequencer is not None:
            seq = self.sequencer.next()
            event["sequence"] = str(seq)
        else:
            seq = None
        if "tenantid" in event and event["tenantid"] != self.source.tenant:
            raise BuildError(f"tenantid {event['tenantid']!r} is not this producer's tenant")
        event_id = event.get("id")
        if not isinstance(event_id, str) or not 0 < len(event_id) <= 128:
            raise BuildError("id must be 1 to 128 characters")
        try:
            _dsse.sign(event, self.signer.key, self.signer.key_id)
        except ValueError as e:  # rfc8785: a number outside I-JSON
            raise BuildError(f"data is not I-JSON: {e}") from e
        body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        return SignedEvent(
            id=event_id,
            idempotency_key=f"{self.source.tenant}:{self.source.source}:{event_id}",
            sequence=seq,
            body=body,
        )
