"""The Python SDK against a live ATP (run by tests/it/producer.rs, which starts the stack and
passes everything in the environment): publish over NATS (asyncio) and HTTP (blocking), read
the records back through the gateway, and re-verify each stored event's signature with the
producer keys ATP publishes. Prints one JSON summary line."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
import urllib.request

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from atp_producer import AuditEvent, HttpPublisher, NatsPublisher, Producer, Recorded, Retry, Sequencer, Signer, Source, verify

env = os.environ.__getitem__


def event(n: int) -> AuditEvent:
    return AuditEvent(type="com.acme.contact.updated", actor_id=f"py-user-{n}", action="UPDATE",
                      resource_type="Contact", resource_id=f"c-{n}", attributes={"sdk": "python", "n": n})


def get(path: str) -> dict:
    req = urllib.request.Request(env("ATP_GATEWAY") + path,
                                 headers={"authorization": f"Bearer {env('ATP_TOKEN_AUDITOR')}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


async def main() -> dict:
    source = Source(env("ATP_TENANT"), env("ATP_SOURCE"), env("ATP_SOURCE_URI"))
    producer = Producer(source, Signer.read_pem_file(env("ATP_KEY_PEM"), env("ATP_KEY_ID")),
                        Sequencer.starting_after(0))
    nats = await NatsPublisher.connect(env("ATP_NATS_URL"), env("ATP_SEED"), source, Retry(attempts=3))
    # Numbered events in a batch must reach ATP in order, or the later numbers would refuse
    # the earlier ones (SEQUENCE_REGRESSION): 3, then 200 with 64 in flight.
    signed = [producer.sign(event(n)) for n in range(3)]
    receipts = await nats.publish_all(signed, in_flight=2)
    more = [producer.sign(event(n)) for n in range(100, 300)]
    receipts += await nats.publish_all(more, in_flight=64)
    signed += more
    repeat = await nats.publish(signed[0])
    await nats.close()

    http = HttpPublisher(env("ATP_GATEWAY"), env("ATP_TOKEN_PRODUCER"), wait=20)
    over_http = producer.sign(event(300))
    first = await http.append_async(over_http)
    again = http.append(over_http)
    assert isinstance(first, Recorded) and isinstance(again, Recorded), (first, again)

    deadline = time.monotonic() + 60
    while True:
        items = get(f"/api/v1/audit/records?sourceId={source.source}&limit=1000")["items"]
        if len(items) >= len(signed) + 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    keys = {k["keyId"]: Ed25519PublicKey.from_public_bytes(base64.b64decode(k["publicKey"]))
            for k in get("/api/v1/producers/keys")["keys"] if k["sourceId"] == source.source}
    verified = sorted(i["record"]["event"]["id"] for i in items if verify(i["record"]["event"], keys))
    return {
        "acked": sorted({r.ingress_seq for r in receipts if hasattr(r, "ingress_seq")} | {repeat.ingress_seq}),
        "sent": sorted(s.id for s in signed + [over_http]),
        "verified": verified,
        "httpFirstIndex": first.chain_index,
        "httpRepeat": again.repeat and again.record_id == first.record_id,
        "sequences": sorted(int(i["record"]["event"]["sequence"]) for i in items),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
    sys.stdout.flush()
