"""Events through ATP's gateway (``POST /api/v1/audit/append``), for producers that cannot
reach NATS. Standard library only."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ._errors import PublishError, Reason, Refused, Rejected, Unavailable
from ._event import SignedEvent
from ._retry import Retry

_RETRYABLE = {429, 502, 503, 504}


@dataclass(frozen=True)
class Recorded:
    """The event is a record (``repeat``: it was one already, from an earlier send)."""

    record_id: str
    chain_index: int
    digest: str
    repeat: bool


@dataclass(frozen=True)
class Accepted:
    """Durable in ATP's ingress stream, not yet a record (no wait asked, or it ran out)."""

    idempotency_key: str
    ingress_seq: int | None


Outcome = Recorded | Accepted


def refusal(status: int, body: Any) -> PublishError:
    """A Problem+JSON answer: the event's rejection when its ``code`` is a reason code, else the
    gateway's refusal of the request."""
    body = body if isinstance(body, dict) else {}
    code, detail = str(body.get("code", "")), str(body.get("detail", ""))
    try:
        return Rejected(Reason(code), detail)
    except ValueError:
        return Refused(status, code, detail)


def outcome(status: int, body: Any, event: SignedEvent) -> Outcome:
    body = body if isinstance(body, dict) else {}
    if status in (200, 201):
        try:
            return Recorded(
                str(body["recordId"]), int(body["chainIndex"]), str(body["digest"]), status == 200
            )
        except (KeyError, ValueError, TypeError) as e:
            raise PublishError(f"a record answer without its fields: {body}") from e
    seq = body.get("ingressSeq")
    return Accepted(str(body.get("idempotencyKey", event.idempotency_key)), seq if isinstance(seq, int) else None)


class HttpPublisher:
    """Sends signed events to ATP's gateway with a bearer token (role ``producer``)."""

    def __init__(self, base: str, token: str, wait: float | None = None, retry: Retry | None = None, timeout: float = 60.0) -> None:
        self._url = base.rstrip("/") + "/api/v1/audit/append"
        self._token = token
        self.wait = wait
        self.retry = retry or Retry()
        self._timeout = timeout

    def append(self, event: SignedEvent) -> Outcome:
        """Sends one event. With ``wait`` it answers :class:`Recorded` or raises
        :class:`Rejected` with a typed reason; 429 and 5xx answers are retried."""
        last = ""
        for attempt in range(max(self.retry.attempts, 1)):
            headers = {
                "authorization": f"Bearer {self._token}",
                "content-type": "application/cloudevents+json",
            }
            if self.wait is not None:
                headers["prefer"] = f"wait={max(int(self.wait), 1)}"
            req = urllib.request.Request(self._url, data=event.body, headers=headers, method="POST")
            retry_after: float | None = None
            try:
                with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                    return outcome(resp.status, _json(resp.read()), event)
            except urllib.error.HTTPError as e:
                body = _json(e.read())
                if e.code not in _RETRYABLE:
                    raise refusal(e.code, body) from None
                last = f"{e.code}: {body.get('detail', '') if isinstance(body, dict) else ''}"
                ra = e.headers.get("retry-after", "")
                retry_after = float(ra) if ra.strip().isdigit() else None
            except (urllib.error.URLError, OSError) as e:
                last = str(e)
            if attempt + 1 < self.retry.attempts:
                time.sleep(min(retry_after, max(self.retry.max_delay, 1.0)) if retry_after is not None else self.retry.backoff(attempt + 1))
        raise Unavailable(f"not accepted after {self.retry.attempts} attempts: {last}")

    async def append_async(self, event: SignedEvent) -> Outcome:
        """:meth:`append` without blocking the event loop."""
        return await asyncio.to_thread(self.append, event)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
