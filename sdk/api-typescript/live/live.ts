// The live run the integration test drives (tests/it/openapi.rs): the generated client against
// a running gateway. Reads ATP_URL and ATP_TOKEN; prints one JSON summary line.
import { AtpError, allRecords, atpClient } from "../src/index.js";

const url = process.env.ATP_URL;
const token = process.env.ATP_TOKEN;
if (!url || !token) {
  throw new Error("set ATP_URL and ATP_TOKEN");
}
const atp = atpClient({ baseUrl: url, token });

// Pages of two, so that the cursor is followed.
const recordIds: string[] = [];
for await (const r of allRecords(atp, { limit: 2 })) {
  recordIds.push(r.recordId);
}
const first = recordIds[0];
if (first === undefined) {
  throw new Error("no records");
}
const proof = await atp.GET("/audit/records/{record_id}/proof", {
  params: { path: { record_id: first } },
});
if (proof.error !== undefined) {
  throw new AtpError(proof.error);
}
const keys = await atp.GET("/integrity/keys");
if (keys.error !== undefined) {
  throw new AtpError(keys.error);
}
const missing = await atp.GET("/audit/records/{record_id}", {
  params: { path: { record_id: "01JDNOSUCHRECORD0000000000" } },
});
console.log(
  JSON.stringify({
    recordIds,
    proof: {
      recordId: proof.data.recordId,
      leafIndex: proof.data.leafIndex,
      treeSize: proof.data.treeSize,
      hashes: proof.data.inclusionProof.length,
    },
    keyIds: keys.data.keys.map((k) => k.kid),
    missing: { status: missing.response.status, code: missing.error?.code },
  }),
);
