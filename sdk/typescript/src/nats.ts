/** Events straight to ATP's ingress stream on NATS JetStream, acknowledged. */
import { readFileSync } from "node:fs";
import { connect, headers, nkeyAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";

import { PublishError, Unavailable } from "./errors.js";
import type { SignedEvent, Source } from "./event.js";
import { backoffMs, DEFAULT_RETRY, sleep, type Retry } from "./retry.js";

/** JetStream's acknowledgement: the event is durable in ATP, which will make it a record or a
 * rejection (`GET /api/v1/audit/rejections` says why). */
export interface Receipt {
  idempotencyKey: string;
  ingressSeq: number;
}

/** Publishes signed events to `atp.ingress.<tenant>.<source>`. */
export class NatsPublisher {
  private readonly js: JetStreamClient;

  constructor(
    private readonly nc: NatsConnection,
    private readonly source: Source,
    readonly retry: Retry = DEFAULT_RETRY,
  ) {
    this.js = jetstream(nc);
  }

  /** Connects as the producer whose nkey seed file `atp producer add` wrote. */
  static async connect(url: string, seedFile: string, source: Source, retry: Retry = DEFAULT_RETRY): Promise<NatsPublisher> {
    const seed = readFileSync(seedFile, "utf8")
      .split("\n")
      .map((l) => l.trim())
      .find((l) => l.startsWith("SU"));
    if (!seed) throw new PublishError(`${seedFile} holds no nkey user seed`);
    const nc = await connect({ servers: url, authenticator: nkeyAuthenticator(new TextEncoder().encode(seed)), name: "atp-producer" });
    return new NatsPublisher(nc, source, retry);
  }

  /** Publishes one event and waits for its acknowledgement, retrying with backoff and jitter
   * until it comes or the attempts run out. */
  async publish(event: SignedEvent): Promise<Receipt> {
    const h = headers();
    h.set("content-type", "application/cloudevents+json");
    let last = "";
    for (let attempt = 0; attempt < Math.max(this.retry.attempts, 1); attempt++) {
      if (attempt) await sleep(backoffMs(this.retry, attempt));
      try {
        const ack = await this.js.publish(this.source.subject, event.body, { headers: h });
        return { idempotencyKey: event.idempotencyKey, ingressSeq: ack.seq };
      } catch (e) {
        last = e instanceof Error ? e.message : String(e);
      }
    }
    throw new Unavailable(`not acknowledged after ${this.retry.attempts} attempts: ${last}`);
  }

  /** Publishes `events` with up to `inFlight` waiting for acknowledgement at once; answers each
   * in order (a Receipt, or the PublishError it ended with). */
  async publishAll(events: Iterable<SignedEvent>, inFlight = 64): Promise<(Receipt | PublishError)[]> {
    const one = (e: SignedEvent) => this.publish(e).catch((err: unknown) => (err instanceof PublishError ? err : new PublishError(String(err))));
    const results: (Receipt | PublishError)[] = [];
    const pending: Promise<Receipt | PublishError>[] = [];
    for (const e of events) {
      if (pending.length >= Math.max(inFlight, 1)) results.push(await (pending.shift() as Promise<Receipt | PublishError>));
      pending.push(one(e));
    }
    for (const p of pending) results.push(await p);
    return results;
  }

  async close(): Promise<void> {
    await this.nc.drain();
  }
}
