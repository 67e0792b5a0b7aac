"""CONTRACT §2's signature: DSSE over 32 bytes of verification material (the CloudEvents
verifiability extension), Ed25519, with structured-mode JSON ``data`` as its RFC 8785 bytes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._errors import SignatureError

PAYLOAD_TYPE = "https://cloudevents.io/verifiability/dsse/v0.1"
#: Extension attributes ATP requires to be signed when present, in this order.
MUST_SIGN = ("sequence", "tenantid")

_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def normalise_time(value: str) -> str:
    """An RFC 3339 time as the material hashes it: UTC, ``Z``, and the fraction only when it is
    not zero, in 3, 6 or 9 digits (as few as hold it)."""
    m = _RFC3339.match(value)
    if not m:
        raise SignatureError(f"time {value!r} is not RFC 3339")
    date, clock, frac, offset = m.groups()
    whole = datetime.fromisoformat(f"{date}T{clock}+00:00")
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        whole -= sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
    nanos = int((frac or "").ljust(9, "0"))
    text = whole.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def data_bytes(event: Mapping[str, Any]) -> bytes:
    """The bytes the signature covers for ``data``: RFC 8785 of JSON ``data``, or
    ``data_base64`` decoded."""
    if "data" in event:
        return rfc8785.dumps(event["data"])
    if "data_base64" in event:
        return base64.b64decode(event["data_base64"])
    return b""


def _extension_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def verification_material(event: Mapping[str, Any]) -> bytes:
    """SHA-256 over the SHA-256 of each signed attribute, in the draft's order."""

    def d(b: bytes) -> bytes:
        return hashlib.sha256(b).digest()

    def attr(name: str) -> bytes:
        v = event.get(name)
        return d((v if isinstance(v, str) else "").encode())

    outer = hashlib.sha256()
    for name in ("id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject"):
        outer.update(attr(name))
    t = event.get("time")
    outer.update(d(normalise_time(t).encode() if isinstance(t, str) else b""))
    outer.update(d(data_bytes(event)))
    signed = event.get("signedextattrs")
    for name in signed.split(",") if isinstance(signed, str) and signed else []:
        outer.update(d(name.encode()))
        outer.update(d(_extension_text(event.get(name, "")).encode()))
    return outer.digest()


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    return f"DSSEv1 {len(payload_type)} {payload_type} {len(body)} ".encode() + body


def sign(event: dict[str, Any], key: Ed25519PrivateKey, key_id: str) -> None:
    """Sets ``signedextattrs`` and ``dssematerial`` on a structured-mode event, in place."""
    signed = [n for n in MUST_SIGN if n in event]
    if signed:
        event["signedextattrs"] = ",".join(signed)
    else:
        event.pop("signedextattrs", None)
    event.pop("dssematerial", None)
    material = verification_material(event)
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(material).decode(),
        "signatures": [
            {"keyid": key_id, "sig": base64.b64encode(key.sign(pae(PAYLOAD_TYPE, material))).decode()}
        ],
    }
    event["dssematerial"] = base64.b64encode(
        json.dumps(envelope, separators=(",", ":")).encode()
    ).decode()


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify(event: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Checks a structured-mode event's ``dssematerial`` against producer keys by key id (as
    ``GET /api/v1/producers/keys`` lists them); answers the key id that verified. Raises
    :class:`SignatureError` saying what does not hold."""
    for name in MUST_SIGN:
        signed = str(event.get("signedextattrs", "")).split(",")
        if name in event and name not in signed:
            raise SignatureError(f"{name} is present but not signed")
    try:
        env = json.loads(_b64(str(event["dssematerial"])))
        payload = _b64(env["payload"])
        signatures = env["signatures"]
    except (KeyError, ValueError, TypeError) as e:
        raise SignatureError(f"dssematerial is not a DSSE envelope: {e}") from e
    for s in signatures:
        key = keys.get(s.get("keyid", ""))
        if key is None:
            continue
        try:
            key.verify(_b64(s["sig"]), pae(env.get("payloadType", ""), payload))
        except (InvalidSignature, KeyError, ValueError) as e:
            raise SignatureError(f"signature by key {s.get('keyid')!r} does not verify") from e
        if env.get("payloadType") != PAYLOAD_TYPE:
            raise SignatureError(f"payloadType {env.get('payloadType')!r} is not {PAYLOAD_TYPE}")
        if payload != verification_material(event):
            raise SignatureError("the event does not match its signed verification material")
        return str(s["keyid"])
    raise SignatureError("no signature by a known key")
