/** Events through ATP's gateway (`POST /api/v1/audit/append`), for producers that cannot reach
 * NATS. Node's `fetch`. */
import { isReason, PublishError, Refused, Rejected, Unavailable } from "./errors.js";
import type { SignedEvent } from "./event.js";
import { backoffMs, DEFAULT_RETRY, sleep, type Retry } from "./retry.js";

/** The event is a record (`repeat`: it was one already, from an earlier send). */
export interface Recorded {
  kind: "recorded";
  recordId: string;
  chainIndex: number;
  digest: string;
  repeat: boolean;
}

/** Durable in ATP's ingress stream, not yet a record (no wait asked, or it ran out). */
export interface Accepted {
  kind: "accepted";
  idempotencyKey: string;
  ingressSeq?: number;
}

export type Outcome = Recorded | Accepted;

const RETRYABLE = new Set([429, 502, 503, 504]);

/** A Problem+JSON answer: the event's rejection when its `code` is a reason code, else the
 * gateway's refusal of the request. */
export function refusal(status: number, body: unknown): PublishError {
  const b = (body ?? {}) as Record<string, unknown>;
  const code = String(b.code ?? "");
  const detail = String(b.detail ?? "");
  return isReason(code) ? new Rejected(code, detail) : new Refused(status, code, detail);
}

export interface HttpOptions {
  /** Seconds to wait for the record or the rejection (the gateway honours at most 30). */
  waitSeconds?: number;
  retry?: Retry;
}

/** Sends signed events to ATP's gateway with a bearer token (role `producer`). */
export class HttpPublisher {
  private readonly url: string;

  constructor(
    base: string,
    private readonly token: string,
    private readonly options: HttpOptions = {},
  ) {
    this.url = `${base.replace(/\/+$/, "")}/api/v1/audit/append`;
  }

  /** Sends one event. With `waitSeconds` it answers `Recorded` or throws `Rejected` with a
   * typed reason; 429 and 5xx answers are retried. */
  async append(event: SignedEvent): Promise<Outcome> {
    const retry = this.options.retry ?? DEFAULT_RETRY;
    let last = "";
    for (let attempt = 0; attempt < Math.max(retry.attempts, 1); attempt++) {
      const h: Record<string, string> = {
        authorization: `Bearer ${this.token}`,
        "content-type": "application/cloudevents+json",
      };
      if (this.options.waitSeconds !== undefined) h.prefer = `wait=${Math.max(Math.floor(this.options.waitSeconds), 1)}`;
      let retryAfterMs: number | undefined;
      try {
        const resp = await fetch(this.url, { method: "POST", headers: h, body: Buffer.from(event.body) });
        const body = (await resp.json().catch(() => null)) as Record<string, unknown> | null;
        if (resp.status === 200 || resp.status === 201) {
          const b = body ?? {};
          if (typeof b.recordId !== "string" || typeof b.chainIndex !== "number" || typeof b.digest !== "string") {
            throw new PublishError(`a record answer without its fields: ${JSON.stringify(b)}`);
          }
          return { kind: "recorded", recordId: b.recordId, chainIndex: b.chainIndex, digest: b.digest, repeat: resp.status === 200 };
        }
        if (resp.status === 202) {
          return {
            kind: "accepted",
            idempotencyKey: typeof body?.idempotencyKey === "string" ? body.idempotencyKey : event.idempotencyKey,
            ingressSeq: typeof body?.ingressSeq === "number" ? body.ingressSeq : undefined,
          };
        }
        if (!RETRYABLE.has(resp.status)) throw refusal(resp.status, body);
        last = `${resp.status}: ${String(body?.detail ?? "")}`;
        const ra = resp.headers.get("retry-after");
        if (ra && /^\d+$/.test(ra.trim())) retryAfterMs = Number(ra) * 1000;
      } catch (e) {
        if (e instanceof PublishError) throw e;
        last = e instanceof Error ? e.message : String(e);
      }
      if (attempt + 1 < retry.attempts) {
        await sleep(retryAfterMs !== undefined ? Math.min(retryAfterMs, Math.max(retry.maxDelayMs, 1000)) : backoffMs(retry, attempt + 1));
      }
    }
    throw new Unavailable(`not accepted after ${retry.attempts} attempts: ${last}`);
  }
}
