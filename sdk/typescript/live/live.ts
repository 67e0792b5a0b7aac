// The TypeScript SDK against a live ATP (run by tests/it/producer.rs, which starts the stack
// and passes everything in the environment): publish over NATS and HTTP, read the records back
// through the gateway, and re-verify each stored event's signature with the producer keys ATP
// publishes. Prints one JSON summary line.
import { createPublicKey, type KeyObject } from "node:crypto";

import { HttpPublisher, NatsPublisher, Producer, Sequencer, Signer, Source, verify, type AuditEvent } from "../src/index.js";

const env = (name: string): string => {
  const v = process.env[name];
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};

const event = (n: number): AuditEvent => ({
  type: "com.acme.contact.updated", actor: { id: `ts-user-${n}` }, action: "UPDATE",
  resource: { type: "Contact", id: `c-${n}` }, attributes: { sdk: "typescript", n },
});

async function get(path: string): Promise<any> {
  const resp = await fetch(env("ATP_GATEWAY") + path, { headers: { authorization: `Bearer ${env("ATP_TOKEN_AUDITOR")}` } });
  return resp.json();
}

const source = new Source(env("ATP_TENANT"), env("ATP_SOURCE"), env("ATP_SOURCE_URI"));
const producer = new Producer(source, Signer.readPemFile(env("ATP_KEY_PEM"), env("ATP_KEY_ID")), Sequencer.startingAfter(0n));
const nats = await NatsPublisher.connect(env("ATP_NATS_URL"), env("ATP_SEED"), source, { attempts: 3, initialMs: 100, maxDelayMs: 1000 });
// Numbered events in a batch must reach ATP in order, or the later numbers would refuse the
// earlier ones (SEQUENCE_REGRESSION): 3, then 200 with 64 in flight.
const signed = [0, 1, 2].map((n) => producer.sign(event(n)));
const receipts = await nats.publishAll(signed, 2);
const more = Array.from({ length: 200 }, (_, i) => producer.sign(event(100 + i)));
receipts.push(...(await nats.publishAll(more, 64)));
signed.push(...more);
const repeat = await nats.publish(signed[0]);
await nats.close();

const http = new HttpPublisher(env("ATP_GATEWAY"), env("ATP_TOKEN_PRODUCER"), { waitSeconds: 20 });
const overHttp = producer.sign(event(300));
const first = await http.append(overHttp);
const again = await http.append(overHttp);
if (first.kind !== "recorded" || again.kind !== "recorded") throw new Error(`no record: ${JSON.stringify([first, again])}`);

const deadline = Date.now() + 60_000;
let items: any[] = [];
while (Date.now() < deadline) {
  items = (await get(`/api/v1/audit/records?sourceId=${source.source}&limit=1000`)).items;
  if (items.length >= signed.length + 1) break;
  await new Promise((r) => setTimeout(r, 200));
}
const keys: Record<string, KeyObject> = {};
for (const k of (await get("/api/v1/producers/keys")).keys) {
  if (k.sourceId !== source.source) continue;
  const der = Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), Buffer.from(k.publicKey, "base64")]);
  keys[k.keyId] = createPublicKey({ key: der, format: "der", type: "spki" });
}
const verified = items.filter((i) => verify(i.record.event, keys)).map((i) => i.record.event.id).sort();
const acked = new Set(receipts.map((r) => ("ingressSeq" in r ? r.ingressSeq : -1)));
acked.add(repeat.ingressSeq);
console.log(JSON.stringify({
  acked: [...acked].filter((s) => s >= 0).sort((a, b) => a - b),
  sent: [...signed, overHttp].map((s) => s.id).sort(),
  verified,
  httpFirstIndex: first.chainIndex,
  httpRepeat: again.repeat && again.recordId === first.recordId,
  sequences: items.map((i) => Number(i.record.event.sequence)).sort((a, b) => a - b),
}));
