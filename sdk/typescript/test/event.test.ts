// Building, signing and numbering events, with no server.
import assert from "node:assert/strict";
import { createPublicKey, generateKeyPairSync } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { CloudEvent } from "cloudevents";

import {
  BuildError, Producer, REASONS, Refused, Rejected, Sequencer, Signer, Source, normaliseTime,
  privateKeyFromSeed, refusal, verify, type AuditEvent,
} from "../src/index.js";

const key = privateKeyFromSeed(Buffer.alloc(32, 3));
const producer = (seq?: Sequencer) => new Producer(new Source("acme", "crm", "https://crm.acme.example"), new Signer(key, "crm-1"), seq);
const event = (over: Partial<AuditEvent> = {}): AuditEvent => ({
  type: "com.acme.contact.updated", actor: { id: "user-42" }, action: "UPDATE", resource: { type: "Contact", id: "c-1" }, ...over,
});
const parse = (body: Uint8Array) => JSON.parse(Buffer.from(body).toString("utf8"));

test("a signed event has fixed bytes, an idempotency key, and verifies", () => {
  const s = producer().sign(event({ id: "e-1" }));
  assert.equal(s.idempotencyKey, "acme:crm:e-1");
  const e = parse(s.body);
  assert.match(e.time, /Z$/);
  assert.equal(verify(e, { "crm-1": createPublicKey(key) }), "crm-1");
});

test("a cloudevents event is signed as the same audit fields", () => {
  const ce = new CloudEvent({
    id: "ce-1", source: "https://crm.acme.example", type: "com.acme.note.created", time: "2026-12-07T10:00:00.000Z",
    datacontenttype: "application/json",
    data: { actor: { id: "u", type: "user" }, action: "CREATE", resource: { type: "Note", id: "n-1" }, attributes: {} },
  });
  const s = producer().signCloudEvent(ce);
  assert.equal(verify(parse(s.body), { "crm-1": createPublicKey(key) }), "crm-1");
  assert.throws(() => producer().signCloudEvent(new CloudEvent({ id: "x", source: "elsewhere", type: "t", data: {} })), BuildError);
});

test("incomplete, nested or non-I-JSON events are refused before sending", () => {
  for (const bad of [
    event({ actor: { id: "" } }), event({ action: "" }), event({ resource: { type: "R", id: "" } }),
    event({ attributes: { nested: { a: 1 } as never } }), event({ id: "" }), event({ id: "x".repeat(129) }),
    event({ attributes: { huge: 2 ** 60 } }), event({ attributes: { nan: Number.NaN } }),
  ]) {
    assert.throws(() => producer().sign(bad), BuildError);
  }
  assert.ok(producer().sign(event({ attributes: { big: 1e21 } })), "1e+21 is not an integer literal");
  assert.throws(() => new Source("ACME", "crm", "u"), BuildError);
  assert.throws(() => new Source("acme", "crm.x", "u"), BuildError);
});

test("a PEM key from openssl or ATP loads", () => {
  const { privateKey } = generateKeyPairSync("ed25519");
  assert.equal(Signer.fromPem(privateKey.export({ type: "pkcs8", format: "pem" }), "k").keyId, "k");
});

test("times normalise as the contract hashes them", () => {
  assert.equal(normaliseTime("2020-06-18T19:24:53+02:00"), "2020-06-18T17:24:53Z");
  assert.equal(normaliseTime("2020-06-18T17:24:53.100Z"), "2020-06-18T17:24:53.100Z");
  assert.equal(normaliseTime("2020-06-18T17:24:53.000Z"), "2020-06-18T17:24:53Z");
  assert.equal(normaliseTime("2020-06-18T17:24:53.1234Z"), "2020-06-18T17:24:53.123400Z");
  assert.equal(normaliseTime("2020-06-18T17:24:53.123456789Z"), "2020-06-18T17:24:53.123456789Z");
});

test("problem codes that are reasons are typed rejections", () => {
  for (const reason of REASONS) {
    const err = refusal(400, { code: reason, detail: "d" });
    assert.ok(err instanceof Rejected && err.reason === reason);
  }
  assert.ok(refusal(403, { code: "FORBIDDEN" }) instanceof Refused);
});

test("a sequencer numbers events, the number is signed, and a file survives a restart", () => {
  const p = producer(Sequencer.startingAfter(9n));
  const a = p.sign(event()), b = p.sign(event());
  assert.deepEqual([a.sequence, b.sequence], [10n, 11n]);
  assert.equal(parse(a.body).signedextattrs, "sequence");
  assert.equal(p.sign(event({ sequence: 3n })).sequence, 3n);
  const dir = mkdtempSync(join(tmpdir(), "atp-seq-"));
  const path = join(dir, "crm.seq");
  const first = Sequencer.file(path);
  const handed = Array.from({ length: 1030 }, () => first.next());
  assert.deepEqual(handed.slice(0, 3), [1n, 2n, 3n]);
  assert.ok(Sequencer.file(path).next() > handed[handed.length - 1]);
  writeFileSync(path, "not a number");
  assert.throws(() => Sequencer.file(path), BuildError);
});
