// The cross-language vectors (tests/vectors/producer): this SDK must sign each input into the
// exact bytes the Rust SDK does, and verify what it signed; plus the CloudEvents verifiability
// draft's case 5 (binary data), reproduced.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createPublicKey } from "node:crypto";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

import { canonical } from "../src/dsse.js";
import { Producer, SignatureError, Signer, Source, privateKeyFromSeed, verificationMaterial, verify } from "../src/index.js";

const VECTORS = fileURLToPath(new URL("../../../../tests/vectors/producer/", import.meta.url));
const inputs = JSON.parse(readFileSync(VECTORS + "inputs.json", "utf8"));
const expected = new Map<string, any>(JSON.parse(readFileSync(VECTORS + "expected.json", "utf8")).map((v: any) => [v.name, v]));

function sign(v: any) {
  const key = privateKeyFromSeed(Buffer.from(v.seed, "hex"));
  const producer = new Producer(new Source(v.tenant, v.source, v.sourceUri), new Signer(key, v.keyId));
  const e = v.event;
  const signed = producer.sign({
    type: e.type,
    id: e.id,
    time: new Date(e.time),
    actor: e.actor,
    action: e.action,
    resource: e.resource,
    outcome: e.outcome,
    subject: e.subject,
    sequence: e.sequence !== undefined ? BigInt(e.sequence) : undefined,
    attributes: e.attributes,
  });
  return { event: JSON.parse(Buffer.from(signed.body).toString("utf8")), key };
}

test("every input signs into the bytes the Rust SDK signs", () => {
  assert.ok(inputs.length >= 3);
  for (const v of inputs) {
    const want = expected.get(v.name);
    const { event } = sign(v);
    assert.equal(canonical(event.data).toString("utf8"), want.canonicalData, v.name);
    assert.equal(verificationMaterial(event).toString("hex"), want.material, v.name);
    assert.equal(event.dssematerial, want.dssematerial, v.name);
    assert.deepEqual(event, want.event, v.name);
  }
});

test("what is signed verifies, and a changed byte or another key does not", () => {
  for (const v of inputs) {
    const { event, key } = sign(v);
    const keys = { [v.keyId]: createPublicKey(key) };
    assert.equal(verify(expected.get(v.name).event, keys), v.keyId);
    const tampered = structuredClone(event);
    tampered.data.action = "DELETE";
    assert.throws(() => verify(tampered, keys), SignatureError);
    const other = { [v.keyId]: createPublicKey(privateKeyFromSeed(Buffer.alloc(32))) };
    assert.throws(() => verify(event, other), SignatureError);
  }
});

test("case 5 (binary data) reproduces the draft's payload", () => {
  const vector = JSON.parse(Buffer.from(
    "eyJwYXlsb2FkVHlwZSI6Imh0dHBzOi8vY2xvdWRldmVudHMuaW8vdmVyaWZpYWJpbGl0eS9kc3NlL3YwLjEiLCJwYXls" +
      "b2FkIjoicUNTZWlaa1MraEg5V2lDbGZxNnBsZnFZTlZ5Mmt2eFdSZm9CckxFem9Eaz0iLCJzaWduYXR1cmVzIjpbeyJr" +
      "ZXlpZCI6InRlc3RrZXkiLCJzaWciOiJEWXdiU3V4SDRXcWFhQlZPVlU4TllJYTZXYnZDazkvdkc5aGV0d3BKNHpJNWo2" +
      "am1BTGRNaHcrcVZuc211YzY2NWZqVlJGVDFRUHUvanA1Z0c0U2pzUT09In1dfQ==", "base64").toString("utf8"));
  const event = {
    specversion: "1.0", id: "1", source: "example/uri", type: "example.type.binary",
    datacontenttype: "application/octet-stream", data_base64: "8J+koQ==",
  };
  assert.equal(verificationMaterial(event).toString("base64"), vector.payload);
});
