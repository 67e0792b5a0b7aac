/**
 * A typed client of ATP's HTTP API: query, proofs, exports, verification and administration.
 *
 * The types are generated from ATP's OpenAPI document (`docs/openapi.json`) on every build, so
 * code that uses a field the API no longer has stops compiling. Requests go through
 * `openapi-fetch`: each call's path, parameters, body and answer are checked by the compiler.
 *
 * ```ts
 * import { atpClient, allRecords } from "@atp/api";
 *
 * const atp = atpClient({ baseUrl: "http://127.0.0.1:8080", token: process.env.ATP_TOKEN });
 * for await (const record of allRecords(atp, { action: "DELETE" })) {
 *   console.log(record.recordId, record.occurredAt);
 * }
 * const { data: proof } = await atp.GET("/audit/records/{record_id}/proof", {
 *   params: { path: { record_id: "01J..." } },
 * });
 * ```
 */
import createClient, { type Client } from "openapi-fetch";

import type { components, paths } from "./schema.js";

export type { components, paths };

/** Every named body of the API. */
export type Schemas = components["schemas"];
/** A record as the API serves it. */
export type AtpRecord = Schemas["Record"];
export type RecordPage = Schemas["RecordPage"];
export type RecordProof = Schemas["RecordProof"];
export type Rejection = Schemas["Rejection"];
export type Export = Schemas["Export"];
export type Jwks = Schemas["Jwks"];
/** Every error answer (RFC 9457 Problem+JSON) with ATP's stable `code`. */
export type Problem = Schemas["Problem"];
/** The filters of `GET /audit/records`. */
export type RecordQuery = NonNullable<paths["/audit/records"]["get"]["parameters"]["query"]>;

// JSON answers only (`application/json`, `application/problem+json`): the proof and checkpoint
// operations also answer `text/plain` when asked, which this client does not ask for.
export type AtpClient = Client<paths, `application/${string}json`>;

export interface AtpClientOptions {
  /** Where the gateway is, e.g. `http://127.0.0.1:8080` (the client adds `/api/v1`). */
  baseUrl: string;
  /** A bearer token; the tenant and roles are the token's. */
  token?: string;
  /** A `fetch` of your own (tests, proxies); the global one by default. */
  fetch?: (request: Request) => Promise<Response>;
}

/** A client of the gateway at `baseUrl`. */
export function atpClient(options: AtpClientOptions): AtpClient {
  const base = options.baseUrl.replace(/\/+$/, "");
  return createClient<paths>({
    baseUrl: `${base}/api/v1`,
    headers: options.token ? { Authorization: `Bearer ${options.token}` } : undefined,
    fetch: options.fetch,
  });
}

/** An error answer of the API, as thrown by the helpers here. */
export class AtpError extends Error {
  constructor(readonly problem: Problem) {
    super(`${problem.code}: ${problem.detail}`);
    this.name = "AtpError";
  }
}

/**
 * Every record `query` selects, newest first, following `nextCursor` page by page: one page
 * in memory at a time.
 */
export async function* allRecords(
  client: AtpClient,
  query: Omit<RecordQuery, "cursor"> = {},
): AsyncGenerator<AtpRecord> {
  let cursor: string | undefined;
  do {
    const { data, error } = await client.GET("/audit/records", {
      params: { query: { ...query, cursor } },
    });
    if (error !== undefined) {
      throw new AtpError(error);
    }
    yield* data.items;
    cursor = data.nextCursor ?? undefined;
  } while (cursor !== undefined);
}
