// The browser package (edgerec.js) under Node, against a running registry and edge node:
//   node edge/browser/tests/package.mjs PACKAGE_DIR REGISTRY_URL TOKEN NODE_URL
// PACKAGE_DIR is the built package ($EDGEREC_WASM_DIR/browser). Every check throws on failure.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [packageDir, registry, token, node] = process.argv.slice(2);
if (!node) {
  console.error("usage: package.mjs PACKAGE_DIR REGISTRY_URL TOKEN NODE_URL");
  process.exit(2);
}
const { EdgeRec, EdgeRecError } = await import(pathToFileURL(join(packageDir, "edgerec.js")));
const wasm = readFileSync(join(packageDir, "edgerec_ranker_bg.wasm"));
const memory = () => {
  const values = new Map();
  return {
    values,
    getItem: (k) => (values.has(k) ? values.get(k) : null),
    setItem: (k, v) => values.set(k, String(v)),
    removeItem: (k) => values.delete(k),
  };
};
const rejects = async (promise, kind, what) => {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof EdgeRecError, `${what}: ${error}`);
    assert.equal(error.kind, kind, `${what}: ${error.message}`);
    return error;
  }
  assert.fail(`${what}: no error`);
};

// The registry and the node serve the same verified bundle to the same visitor, and rank alike.
const userId = "package-test-visitor";
const key = (await (await fetch(`${registry}/v1/signing-key`, { headers: { Authorization: `Bearer ${token}` } })).json())
  .public_key;
const fromRegistry = await EdgeRec.connect({ registry: { url: registry, token }, userId, publicKey: key, wasm, storage: null });
const storage = memory();
const fromNode = await EdgeRec.connect({ node, userId, wasm, storage, batchSize: 3, flushIntervalMs: 60_000 });
assert.deepEqual(fromNode.model.version, fromRegistry.model.version);
assert.equal(fromNode.model.manifestDigest, fromRegistry.model.manifestDigest);
assert.ok(storage.values.get(`edgerec:key:${node}`), "the node's key was not pinned");
assert.equal(storage.values.get(`edgerec:key:${node}`), key, "the node names another key than the registry");
const items = fromNode.items();
assert.equal(items.length, fromNode.model.items);

// track(): history at once, events in batches of 3, all acknowledged by the node.
let sent = 0;
fromNode.on((event) => {
  if (event.type === "sent") sent += event.count;
});
for (const item of items.slice(0, 4)) {
  fromNode.track({ item });
}
assert.deepEqual(fromNode.history, items.slice(0, 4));
await fromNode.flush();
assert.equal(sent, 4);
assert.equal(fromNode.pendingEvents, 0);
assert.throws(() => fromNode.track({ item: "" }), /item id/);
assert.throws(() => fromNode.track({ item: items[0], kind: "like" }), /unknown event kind/);
assert.throws(() => fromNode.track({ item: items[0], kind: "rating" }), /finite `value`/);

// An event the node refuses (its clock is 5 minutes behind this one) is dropped with its batch, not retried for
// ever; the events after it go through.
const dropped = [];
fromNode.on((event) => {
  if (event.type === "dropped") dropped.push(event);
});
fromNode.track({ item: items[5], timeMs: Date.now() + 3_600_000 });
await rejects(fromNode.flush(), "invalid_events", "event from the future");
assert.equal(fromNode.pendingEvents, 0);
assert.equal(dropped.length, 1);
fromNode.track({ item: items[6], timeMs: Date.now() - 8 * 24 * 3_600_000 });
assert.deepEqual(await fromNode.flush(), { sent: 0 });
assert.equal(dropped.length, 2, "an event older than the node accepts is dropped before sending");
fromNode.track({ item: items[0] });
assert.deepEqual(await fromNode.flush(), { sent: 1 });
assert.equal(sent, 5);

// The registry alone gives no node to send events to: the history is kept, nothing is queued.
fromRegistry.track({ item: items[9] });
assert.equal(fromRegistry.pendingEvents, 0);
fromRegistry.clearHistory();

// Same history → same top-k on the device (either source) and on the node.
for (const item of fromNode.history) fromRegistry.track({ item });
const device = fromNode.recommend({ k: 10 });
const viaRegistry = fromRegistry.recommend({ k: 10 });
const onNode = await fromNode.recommendOnNode({ k: 10 });
assert.deepEqual(device.items.map((s) => s.item), onNode.items.map((s) => s.item));
assert.deepEqual(viaRegistry.items.map((s) => s.item), device.items.map((s) => s.item));
assert.equal(onNode.variant, device.variant);
for (const [a, b] of device.items.map((s, i) => [s.score, onNode.items[i].score])) {
  assert.ok(Math.abs(a - b) <= 1e-5 * Math.max(1, Math.abs(a)), `scores ${a} / ${b}`);
}

// Local privacy mode: history kept, nothing sent, the node never asked.
const requests = [];
const watching = (url, init) => {
  requests.push(`${init?.method ?? "GET"} ${url}`);
  return fetch(url, init);
};
const privateRec = await EdgeRec.connect({ node, privacy: "local", wasm, storage: memory(), fetch: watching });
const loads = requests.length;
privateRec.track({ item: items[0] });
assert.deepEqual(privateRec.history, [items[0]]);
assert.deepEqual(await privateRec.flush(), { sent: 0 });
await rejects(privateRec.recommendOnNode({ k: 5 }), "privacy", "private recommendOnNode");
assert.equal(requests.length, loads, `private mode sent ${requests.slice(loads)}`);
assert.ok(requests.every((r) => r.startsWith("GET ")), `${requests}`);

// Refusals: another key, a pinned key that changed, a record naming another version than its signed manifest, an
// unknown surface, bad options.
const relabel = async (url, init) => {
  const response = await fetch(url, init);
  if (!url.includes("/v1/models/")) return response;
  const record = await response.json();
  record.version = "99.0.0";
  return new Response(JSON.stringify(record), { status: 200, headers: { "Content-Type": "application/json" } });
};
await rejects(EdgeRec.connect({ node, wasm, storage: null, fetch: relabel }), "record_mismatch", "relabelled record");
await rejects(EdgeRec.connect({ node, wasm, storage: null, maxHistory: 501 }), "invalid_options", "maxHistory");
const otherKey = "11".repeat(32);
await rejects(EdgeRec.connect({ node, publicKey: otherKey, wasm, storage: null }), "bad_signature", "wrong key");
const pinned = memory();
pinned.setItem(`edgerec:key:${node}`, otherKey);
await rejects(EdgeRec.connect({ node, wasm, storage: pinned }), "bad_signature", "changed key");
await rejects(EdgeRec.connect({ node, surface: "nowhere", wasm, storage: null }), "unknown_surface", "surface");
await rejects(EdgeRec.connect({ wasm }), "invalid_options", "no source");
await rejects(EdgeRec.connect({ registry: { url: registry }, wasm, storage: null }), "unauthenticated", "registry without token");

// Offline once loaded: a fresh page state whose source is unreachable restarts from the saved plan and cache.
// Node has no Cache API, so the bundle files cannot come back offline here: a clear refusal, not a hang.
const offlineStorage = memory();
await EdgeRec.connect({ node, wasm, storage: offlineStorage });
const unreachable = () => Promise.reject(new TypeError("fetch failed"));
await rejects(EdgeRec.connect({ node, wasm, storage: offlineStorage, fetch: unreachable }), "network", "offline");

console.log(JSON.stringify({ ok: true, version: fromNode.model.version, items: items.length }));
