// The TypeScript SDK's publish rate, for `atp-bench relay` (which starts the servers and
// passes everything in the environment): builds and signs ATP_BENCH_EVENTS events, then
// publishes them to one partition in order with ATP_BENCH_IN_FLIGHT waiting for their
// acknowledgement. Prints one JSON line: events per second signing, and publishing.
import { connect } from "@nats-io/transport-node";

import { NatsPublisher, Producer, Signer, Source } from "../src/index.js";

const env = (name: string): string => {
  const v = process.env[name];
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};

const n = Number(env("ATP_BENCH_EVENTS"));
const inFlight = Number(env("ATP_BENCH_IN_FLIGHT"));
const source = new Source(env("ATP_TENANT"), env("ATP_SOURCE"), env("ATP_SOURCE_URI"));
const producer = new Producer(source, Signer.readPemFile(env("ATP_KEY_PEM"), env("ATP_KEY_ID")));
let t = performance.now();
const signed = Array.from({ length: n }, (_, i) =>
  producer.sign({
    type: "com.example.audit", actor: { id: `user-${i % 1000}` }, action: "UPDATE",
    resource: { type: "Order", id: `o-${i}` }, attributes: { ip: "192.0.2.1" },
  }),
);
const sign = n / ((performance.now() - t) / 1000);
// The bench's servers run without authentication: the client is connected here.
const publisher = new NatsPublisher(await connect({ servers: env("ATP_NATS_URL") }), source);
t = performance.now();
const results = await publisher.publishAll(signed, inFlight);
const publish = n / ((performance.now() - t) / 1000);
await publisher.close();
const failed = results.filter((r) => !("ingressSeq" in r));
if (failed.length) throw new Error(`not acknowledged: ${JSON.stringify(failed.slice(0, 3))}`);
console.log(JSON.stringify({ sign, publish }));
