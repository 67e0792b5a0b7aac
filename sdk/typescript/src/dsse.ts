/**
 * CONTRACT §2's signature: DSSE over 32 bytes of verification material (the CloudEvents
 * verifiability extension), Ed25519, with structured-mode JSON `data` as its RFC 8785 bytes.
 */
import { createHash, createPrivateKey, sign as edSign, verify as edVerify, type KeyObject } from "node:crypto";
import canonicalize from "canonicalize";

import { SignatureError } from "./errors.js";

export const PAYLOAD_TYPE = "https://cloudevents.io/verifiability/dsse/v0.1";
/** Extension attributes ATP requires to be signed when present, in this order. */
export const MUST_SIGN = ["sequence", "tenantid"] as const;

export type JsonEvent = Record<string, unknown>;

const RFC3339 = /^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$/;

/** An RFC 3339 time as the material hashes it: UTC, `Z`, the fraction only when not zero, in
 * 3, 6 or 9 digits (as few as hold it). */
export function normaliseTime(value: string): string {
  const m = RFC3339.exec(value);
  if (!m) throw new SignatureError(`time ${JSON.stringify(value)} is not RFC 3339`);
  const [, date, clock, frac = "", offset] = m;
  let ms = Date.parse(`${date}T${clock}Z`);
  if (offset !== "Z" && offset !== "z") {
    const sign = offset[0] === "+" ? 1 : -1;
    ms -= sign * (Number(offset.slice(1, 3)) * 60 + Number(offset.slice(4, 6))) * 60_000;
  }
  const text = new Date(ms).toISOString().slice(0, 19);
  const nanos = Number(frac.padEnd(9, "0"));
  if (nanos === 0) return `${text}Z`;
  if (nanos % 1_000_000 === 0) return `${text}.${String(nanos / 1_000_000).padStart(3, "0")}Z`;
  if (nanos % 1_000 === 0) return `${text}.${String(nanos / 1_000).padStart(6, "0")}Z`;
  return `${text}.${String(nanos).padStart(9, "0")}Z`;
}

/** RFC 8785 bytes of a JSON value. */
export function canonical(value: unknown): Buffer {
  const text = canonicalize(value);
  if (text === undefined) throw new SignatureError("the value has no JSON form");
  return Buffer.from(text, "utf8");
}

/** The bytes the signature covers for `data`: RFC 8785 of JSON `data`, or `data_base64`. */
export function dataBytes(event: JsonEvent): Buffer {
  if ("data" in event) return canonical(event.data);
  if (typeof event.data_base64 === "string") return Buffer.from(event.data_base64, "base64");
  return Buffer.alloc(0);
}

const sha256 = (b: Buffer | string): Buffer => createHash("sha256").update(b).digest();

/** SHA-256 over the SHA-256 of each signed attribute, in the draft's order. */
export function verificationMaterial(event: JsonEvent): Buffer {
  const attr = (name: string) => sha256(typeof event[name] === "string" ? (event[name] as string) : "");
  const outer = createHash("sha256");
  for (const name of ["id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject"]) {
    outer.update(attr(name));
  }
  outer.update(sha256(typeof event.time === "string" ? normaliseTime(event.time) : ""));
  outer.update(sha256(dataBytes(event)));
  const signed = typeof event.signedextattrs === "string" && event.signedextattrs ? event.signedextattrs.split(",") : [];
  for (const name of signed) {
    const v = event[name];
    outer.update(sha256(name));
    outer.update(sha256(typeof v === "string" ? v : v === undefined ? "" : JSON.stringify(v)));
  }
  return outer.digest();
}

/** DSSE v1 pre-authentication encoding. */
export function pae(payloadType: string, body: Buffer): Buffer {
  return Buffer.concat([
    Buffer.from(`DSSEv1 ${Buffer.byteLength(payloadType)} ${payloadType} ${body.length} `, "utf8"),
    body,
  ]);
}

/** Sets `signedextattrs` and `dssematerial` on a structured-mode event, in place. */
export function signEvent(event: JsonEvent, key: KeyObject, keyId: string): void {
  const signed = MUST_SIGN.filter((n) => n in event);
  if (signed.length) event.signedextattrs = signed.join(",");
  else delete event.signedextattrs;
  delete event.dssematerial;
  const material = verificationMaterial(event);
  const envelope = {
    payloadType: PAYLOAD_TYPE,
    payload: material.toString("base64"),
    signatures: [{ keyid: keyId, sig: edSign(null, pae(PAYLOAD_TYPE, material), key).toString("base64") }],
  };
  event.dssematerial = Buffer.from(JSON.stringify(envelope), "utf8").toString("base64");
}

/** Checks a structured-mode event's `dssematerial` against producer public keys by key id
 * (as `GET /api/v1/producers/keys` lists them); answers the key id that verified. */
export function verify(event: JsonEvent, keys: Record<string, KeyObject>): string {
  const signedList = String(event.signedextattrs ?? "").split(",");
  for (const name of MUST_SIGN) {
    if (name in event && !signedList.includes(name)) throw new SignatureError(`${name} is present but not signed`);
  }
  let env: { payloadType?: string; payload?: string; signatures?: { keyid?: string; sig?: string }[] };
  try {
    env = JSON.parse(Buffer.from(String(event.dssematerial), "base64").toString("utf8"));
  } catch (e) {
    throw new SignatureError(`dssematerial is not a DSSE envelope: ${e}`);
  }
  const payload = Buffer.from(env.payload ?? "", "base64");
  for (const s of env.signatures ?? []) {
    const key = s.keyid !== undefined ? keys[s.keyid] : undefined;
    if (!key) continue;
    if (!edVerify(null, pae(env.payloadType ?? "", payload), key, Buffer.from(s.sig ?? "", "base64"))) {
      throw new SignatureError(`signature by key ${JSON.stringify(s.keyid)} does not verify`);
    }
    if (env.payloadType !== PAYLOAD_TYPE) throw new SignatureError(`payloadType is not ${PAYLOAD_TYPE}`);
    if (!payload.equals(verificationMaterial(event))) {
      throw new SignatureError("the event does not match its signed verification material");
    }
    return s.keyid as string;
  }
  throw new SignatureError("no signature by a known key");
}

/** An Ed25519 private key from its 32-byte seed (PKCS#8 wrapping, RFC 8410). */
export function privateKeyFromSeed(seed: Buffer): KeyObject {
  const prefix = Buffer.from("302e020100300506032b657004220420", "hex");
  return createPrivateKey({ key: Buffer.concat([prefix, seed]), format: "der", type: "pkcs8" });
}
