import assert from "node:assert/strict";
import { test } from "node:test";

import {
  type AtpRecord,
  AtpError,
  type Export,
  type Jwks,
  type Problem,
  type RecordProof,
  type Schemas,
  allRecords,
  atpClient,
} from "../src/index.js";

// `true` only when `T` is `any`: what a generator makes of a body the document leaves untyped.
type IsAny<T> = 0 extends 1 & T ? true : false;
type Typed<T> = IsAny<T> extends true ? false : true;
type Assert<T extends true> = T;

// These lines compile only while the document types every body they name: an answer
// documented as `{}` would make the member `any`, and the assertion fail to compile.
export type TypedBodies = [
  Assert<Typed<AtpRecord["recordId"]>>,
  Assert<Typed<AtpRecord["chainIndex"]>>,
  Assert<Typed<RecordProof["inclusionProof"]>>,
  Assert<Typed<Export["status"]>>,
  Assert<Typed<Jwks["keys"][number]["x"]>>,
  Assert<Typed<Problem["code"]>>,
  Assert<Typed<Schemas["Rejection"]["reason"]>>,
  Assert<Typed<Schemas["Accepted"]["ingressSeq"]>>,
  Assert<Typed<Schemas["BatchResults"]["results"][number]["status"]>>,
  Assert<Typed<Schemas["RecordVerification"]["checks"][number]["ok"]>>,
  Assert<Typed<Schemas["DeadLetterEntry"]["letter"]["code"]>>,
  Assert<Typed<Schemas["AuditData"]["actor"]["id"]>>,
];

function record(id: string): AtpRecord {
  return {
    recordId: id,
    tenantId: "acme",
    sourceId: "crm",
    chainIndex: 0,
    digest: "sha256:00",
    chainHash: "sha256:00",
    occurredAt: "2026-12-07T00:00:00Z",
    committedAt: "2026-12-07T00:00:00Z",
    record: {},
    data: {},
  };
}

test("allRecords follows nextCursor until the last page, with the caller's token", async () => {
  const seen: string[] = [];
  const pages: Record<string, { items: AtpRecord[]; nextCursor: string | null }> = {
    "": { items: [record("r3"), record("r2")], nextCursor: "c1" },
    c1: { items: [record("r1")], nextCursor: null },
  };
  const fetch = async (request: Request): Promise<Response> => {
    const url = new URL(request.url);
    seen.push(`${url.pathname}?${url.searchParams}`);
    assert.equal(request.headers.get("authorization"), "Bearer t0ken");
    const page = pages[url.searchParams.get("cursor") ?? ""];
    return new Response(JSON.stringify(page), {
      headers: { "content-type": "application/json" },
    });
  };
  const atp = atpClient({ baseUrl: "http://atp.test/", token: "t0ken", fetch });
  const ids: string[] = [];
  for await (const r of allRecords(atp, { action: "DELETE", limit: 2 })) {
    ids.push(r.recordId);
  }
  assert.deepEqual(ids, ["r3", "r2", "r1"]);
  assert.deepEqual(seen, [
    "/api/v1/audit/records?action=DELETE&limit=2",
    "/api/v1/audit/records?action=DELETE&limit=2&cursor=c1",
  ]);
});

test("an error answer is thrown as AtpError carrying the problem", async () => {
  const problem: Problem = {
    type: "about:blank",
    title: "Invalid query",
    status: 400,
    detail: "limit must be 1..=1000",
    code: "INVALID_QUERY",
    traceId: "0af7651916cd43dd8448eb211c80319c",
  };
  const fetch = async (): Promise<Response> =>
    new Response(JSON.stringify(problem), {
      status: 400,
      headers: { "content-type": "application/problem+json" },
    });
  const atp = atpClient({ baseUrl: "http://atp.test", fetch });
  await assert.rejects(
    async () => {
      for await (const _ of allRecords(atp, { limit: 0 })) {
        // nothing
      }
    },
    (e: unknown) => e instanceof AtpError && e.problem.code === "INVALID_QUERY",
  );
});
