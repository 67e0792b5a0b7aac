"""Events straight to ATP's ingress stream on NATS JetStream, acknowledged."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import nats
from nats.js.errors import BadRequestError

from ._errors import PublishError, Unavailable
from ._event import SignedEvent, Source
from ._retry import Retry

log = logging.getLogger("atp_producer")
_HEADERS = {"content-type": "application/cloudevents+json"}


@dataclass(frozen=True)
class Receipt:
    """JetStream's acknowledgement: the event is durable in ATP, which will make it a record
    or a rejection (``GET /api/v1/audit/rejections`` says why)."""

    idempotency_key: str
    ingress_seq: int


class NatsPublisher:
    """Publishes signed events to ``atp.ingress.<tenant>.<source>`` (asyncio)."""

    def __init__(self, client: Any, source: Source, retry: Retry | None = None) -> None:
        self._nc = client
        self._js = client.jetstream()
        self._subject = source.subject
        self.retry = retry or Retry()

    @classmethod
    async def connect(
        cls, url: str, seed_file: str | os.PathLike[str], source: Source, retry: Retry | None = None
    ) -> NatsPublisher:
        """Connects as the producer whose nkey seed file ``atp producer add`` wrote."""
        client = await nats.connect(url, nkeys_seed=os.fspath(seed_file), name="atp-producer")
        return cls(client, source, retry)

    async def publish(self, event: SignedEvent) -> Receipt:
        """Publishes one event and waits for its acknowledgement, retrying with backoff and
        jitter until it comes or the attempts run out."""
        last = ""
        for attempt in range(max(self.retry.attempts, 1)):
            if attempt:
                await asyncio.sleep(self.retry.backoff(attempt))
            try:
                ack = await self._js.publish(self._subject, event.body, headers=_HEADERS)
                return Receipt(event.idempotency_key, ack.seq)
            except BadRequestError as e:
                raise PublishError(f"JetStream refused the message: {e}") from e
            except (nats.errors.Error, asyncio.TimeoutError, OSError) as e:
                log.debug("%s not acknowledged (attempt %d): %s", event.id, attempt + 1, e)
                last = str(e) or type(e).__name__
        raise Unavailable(f"not acknowledged after {self.retry.attempts} attempts: {last}")

    async def publish_all(self, events: Iterable[SignedEvent], in_flight: int = 64) -> list[Receipt | PublishError]:
        """Publishes ``events`` with up to ``in_flight`` waiting for acknowledgement at once;
        answers each in order (a Receipt, or the PublishError it ended with)."""
        async def one(e: SignedEvent) -> Receipt | PublishError:
            try:
                return await self.publish(e)
            except PublishError as err:
                return err

        results: list[Receipt | PublishError] = []
        pending: deque[asyncio.Future[Receipt | PublishError]] = deque()
        for e in events:
            if len(pending) >= max(in_flight, 1):
                results.append(await pending.popleft())
            pending.append(asyncio.ensure_future(one(e)))
        while pending:
            results.append(await pending.popleft())
        return results

    async def close(self) -> None:
        await self._nc.drain()


class BlockingNatsPublisher:
    """The same, for code without an event loop: it runs one on a thread of its own."""

    def __init__(self, url: str, seed_file: str | os.PathLike[str], source: Source, retry: Retry | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="atp-producer", daemon=True)
        self._thread.start()
        self._inner: NatsPublisher = self._run(NatsPublisher.connect(url, seed_file, source, retry))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def publish(self, event: SignedEvent) -> Receipt:
        result: Receipt = self._run(self._inner.publish(event))
        return result

    def publish_all(self, events: Iterable[SignedEvent], in_flight: int = 64) -> list[Receipt | PublishError]:
        result: list[Receipt | PublishError] = self._run(self._inner.publish_all(list(events), in_flight))
        return result

    def close(self) -> None:
        self._run(self._inner.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def __enter__(self) -> BlockingNatsPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
