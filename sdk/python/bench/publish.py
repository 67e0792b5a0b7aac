"""The Python SDK's publish rate, for `atp-bench relay` (which starts the servers and passes
everything in the environment): builds and signs ATP_BENCH_EVENTS events, then publishes them
to one partition in order with ATP_BENCH_IN_FLIGHT waiting for their acknowledgement. Prints
one JSON line: events per second signing, and publishing."""

from __future__ import annotations

import asyncio
import json
import os
import time

import nats

from atp_producer import AuditEvent, NatsPublisher, Producer, PublishError, Signer, Source

env = os.environ.__getitem__


async def main() -> dict:
    n, in_flight = int(env("ATP_BENCH_EVENTS")), int(env("ATP_BENCH_IN_FLIGHT"))
    source = Source(env("ATP_TENANT"), env("ATP_SOURCE"), env("ATP_SOURCE_URI"))
    producer = Producer(source, Signer.read_pem_file(env("ATP_KEY_PEM"), env("ATP_KEY_ID")))
    t = time.perf_counter()
    signed = [
        producer.sign(AuditEvent(type="com.example.audit", actor_id=f"user-{i % 1000}", action="UPDATE",
                                 resource_type="Order", resource_id=f"o-{i}", attributes={"ip": "192.0.2.1"}))
        for i in range(n)
    ]
    sign = n / (time.perf_counter() - t)
    # The bench's servers run without authentication: the client is connected here.
    publisher = NatsPublisher(await nats.connect(env("ATP_NATS_URL")), source)
    t = time.perf_counter()
    results = await publisher.publish_all(signed, in_flight=in_flight)
    publish = n / (time.perf_counter() - t)
    await publisher.close()
    failed = [r for r in results if isinstance(r, PublishError)]
    assert not failed, failed[:3]
    return {"sign": sign, "publish": publish}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())), flush=True)
