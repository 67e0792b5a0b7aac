/** Building and signing events: an `AuditEvent` in plain fields or a `cloudevents` event,
 * signed by a `Producer` into a `SignedEvent` whose bytes never change. */
import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { createPrivateKey, type KeyObject } from "node:crypto";
import type { CloudEventV1 } from "cloudevents";

import { signEvent, type JsonEvent } from "./dsse.js";
import { BuildError } from "./errors.js";

const TENANT = /^[a-z0-9][a-z0-9-]{0,62}$/;
const SOURCE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const U64_MAX = 2n ** 64n - 1n;

/** A ULID: 48 bits of milliseconds, 80 random bits, Crockford base32. */
export function newId(): string {
  let n = (BigInt(Date.now()) << 80n) | BigInt("0x" + randomBytes(10).toString("hex"));
  let out = "";
  for (let i = 0; i < 26; i++) {
    out = CROCKFORD[Number(n & 31n)] + out;
    n >>= 5n;
  }
  return out;
}

/** The partition a producer writes to: tenant, source id, and the registered source URI. */
export class Source {
  constructor(
    readonly tenant: string,
    readonly source: string,
    readonly uri: string,
  ) {
    if (!TENANT.test(tenant)) throw new BuildError(`invalid tenant id ${JSON.stringify(tenant)}`);
    if (!SOURCE.test(source)) throw new BuildError(`invalid source id ${JSON.stringify(source)}`);
    if (!uri) throw new BuildError("the source URI is empty");
  }

  /** The NATS subject the producer publishes to. */
  get subject(): string {
    return `atp.ingress.${this.tenant}.${this.source}`;
  }
}

/** The producer's Ed25519 key and the key id ATP registered for it. */
export class Signer {
  constructor(
    readonly key: KeyObject,
    readonly keyId: string,
  ) {
    if (key.asymmetricKeyType !== "ed25519") throw new BuildError("not an Ed25519 private key");
  }

  /** A PKCS#8 PEM key, as `openssl genpkey -algorithm ed25519` and `atp producer add
   * --generate-key` write it. */
  static fromPem(pem: string | Buffer, keyId: string): Signer {
    return new Signer(createPrivateKey(pem), keyId);
  }

  static readPemFile(path: string, keyId: string): Signer {
    return Signer.fromPem(readFileSync(path), keyId);
  }
}

export type Scalar = string | number | boolean | null;

/** An audit event in plain fields: who did what to which resource, with flat attributes. */
export interface AuditEvent {
  type: string;
  actor: { id: string; type?: string };
  action: string;
  resource: { type: string; id: string };
  outcome?: string;
  attributes?: Record<string, Scalar>;
  /** Unique per source; ATP records one event per id. Default: a new ULID when signed. */
  id?: string;
  /** When it happened. Default: when it is signed. */
  time?: Date;
  subject?: string;
  /** Strictly increasing per source (an outbox row's order, say): exactly-once. */
  sequence?: bigint;
}

/** A signed event, ready to send as often as it takes: its bytes are fixed, so every retry is
 * the same submission and ATP records it once. */
export interface SignedEvent {
  readonly id: string;
  /** `<tenant>:<source>:<id>`: what ATP recognises repeats by. */
  readonly idempotencyKey: string;
  readonly sequence?: bigint;
  /** The structured-mode CloudEvent (`application/cloudevents+json`), as sent. */
  readonly body: Uint8Array;
}

function utcMillis(t: Date): string {
  if (Number.isNaN(t.getTime())) throw new BuildError("invalid time");
  return t.toISOString();
}

/** A number whose JSON form is an integer outside ±(2^53 − 1) is not I-JSON: another reader
 * could take it for a different number. */
function checkNumber(name: string, v: unknown): void {
  if (typeof v === "number" && (!Number.isFinite(v) || (/^-?\d+$/.test(String(v)) && !Number.isSafeInteger(v)))) {
    throw new BuildError(`attribute ${JSON.stringify(name)}: ${v} is not an I-JSON number`);
  }
}

const BLOCK = 1024n;

/** Numbers a producer's events. In memory (`startingAfter`) the caller says where it was;
 * with a file (`file`) a restarted producer goes on above every number it handed out (the file
 * holds the end of a block reserved with one durable write: gaps are allowed, going back is
 * not). */
export class Sequencer {
  private reserved: bigint;
  private constructor(
    private nextValue: bigint,
    private readonly path?: string,
  ) {
    this.reserved = nextValue;
  }

  static startingAfter(last: bigint): Sequencer {
    return new Sequencer(last + 1n);
  }

  static file(path: string): Sequencer {
    let text: string;
    try {
      text = readFileSync(path, "utf8").trim();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return new Sequencer(1n, path);
      throw e;
    }
    if (!/^\d+$/.test(text)) throw new BuildError(`${path} does not hold a sequence`);
    return new Sequencer(BigInt(text), path);
  }

  next(): bigint {
    const n = this.nextValue;
    if (n >= U64_MAX) throw new BuildError("the sequence is exhausted");
    if (this.path !== undefined && n >= this.reserved) {
      const end = n + BLOCK;
      const tmp = `${this.path}.tmp`;
      writeFileSync(tmp, `${end}\n`);
      const fd = openSync(tmp, "r+");
      fsyncSync(fd);
      closeSync(fd);
      renameSync(tmp, this.path);
      const dir = openSync(dirname(this.path), "r");
      fsyncSync(dir);
      closeSync(dir);
      this.reserved = end;
    }
    this.nextValue = n + 1n;
    return n;
  }
}

/** A producer: its `Source`, its `Signer`, optionally a `Sequencer`. It signs; a publisher
 * sends. */
export class Producer {
  constructor(
    readonly source: Source,
    readonly signer: Signer,
    readonly sequencer?: Sequencer,
  ) {}

  sign(event: AuditEvent): SignedEvent {
    if (!event.actor?.id) throw new BuildError("no actor");
    if (!event.action) throw new BuildError("no action");
    if (!event.resource?.type || !event.resource?.id) throw new BuildError("no resource");
    const attributes = event.attributes ?? {};
    for (const [name, v] of Object.entries(attributes)) {
      if (v !== null && typeof v === "object") {
        throw new BuildError(`attribute ${JSON.stringify(name)} is not a string, number, boolean or null (attributes are flat)`);
      }
      checkNumber(name, v);
    }
    const data: JsonEvent = {
      actor: { id: event.actor.id, type: event.actor.type ?? "user" },
      action: event.action,
      resource: { type: event.resource.type, id: event.resource.id },
    };
    if (event.outcome !== undefined) data.outcome = event.outcome;
    data.attributes = { ...attributes };
    const out: JsonEvent = {
      specversion: "1.0",
      id: event.id ?? newId(),
      source: this.source.uri,
      type: event.type,
      time: utcMillis(event.time ?? new Date()),
      datacontenttype: "application/json",
    };
    if (event.subject !== undefined) out.subject = event.subject;
    if (event.sequence !== undefined) out.sequence = event.sequence.toString();
    out.data = data;
    return this.signJson(out);
  }

  /** Signs a `cloudevents` event whose data is the audit fields (an object or JSON text). */
  signCloudEvent(event: CloudEventV1<unknown>): SignedEvent {
    if (event.source !== this.source.uri) {
      throw new BuildError(`source ${JSON.stringify(event.source)} is not this producer's ${JSON.stringify(this.source.uri)}`);
    }
    const data = typeof event.data === "string" ? JSON.parse(event.data) : event.data;
    if (data === null || typeof data !== "object" || Array.isArray(data)) throw new BuildError("data is not a JSON object");
    const out: JsonEvent = {
      specversion: "1.0",
      id: event.id,
      source: event.source,
      type: event.type,
      time: utcMillis(event.time ? new Date(event.time) : new Date()),
      datacontenttype: "application/json",
    };
    if (event.subject !== undefined) out.subject = event.subject;
    if (event.dataschema !== undefined) out.dataschema = event.dataschema;
    const core = new Set(["specversion", "id", "source", "type", "time", "datacontenttype", "subject", "dataschema", "data", "data_base64"]);
    for (const [name, value] of Object.entries(event)) {
      if (!core.has(name) && value !== undefined && (typeof value !== "object" || value === null)) {
        out[name] = String(value);
      }
    }
    out.data = data as JsonEvent;
    return this.signJson(out);
  }

  private signJson(event: JsonEvent): SignedEvent {
    let sequence: bigint | undefined;
    if (event.sequence !== undefined) {
      if (typeof event.sequence !== "string" || !/^\d+$/.test(event.sequence)) {
        throw new BuildError(`sequence ${JSON.stringify(event.sequence)} is not a decimal integer`);
      }
      sequence = BigInt(event.sequence);
      if (sequence > U64_MAX) throw new BuildError("sequence is above 2^64 - 1");
    } else if (this.sequencer) {
      sequence = this.sequencer.next();
      event.sequence = sequence.toString();
    }
    if ("tenantid" in event && event.tenantid !== this.source.tenant) {
      throw new BuildError(`tenantid ${JSON.stringify(event.tenantid)} is not this producer's tenant`);
    }
    const id = event.id;
    if (typeof id !== "string" || id.length === 0 || id.length > 128) throw new BuildError("id must be 1 to 128 characters");
    signEvent(event, this.signer.key, this.signer.keyId);
    return {
      id,
      idempotencyKey: `${this.source.tenant}:${this.source.source}:${id}`,
      sequence,
      body: Buffer.from(JSON.stringify(event), "utf8"),
    };
  }
}
