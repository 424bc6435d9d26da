// The browser package (edgerec.js) under Node, against a running registry and edge node:
//   node edge/browser/tests/package.mjs PACKAGE_DIR REGISTRY_URL TOKEN NODE_URL SITE_TOKEN
// PACKAGE_DIR is the built package ($EDGEREC_WASM_DIR/browser); SITE_TOKEN a visitor token the node accepts, signed
// by the site's backend. Every check throws on failure.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

import { memory, rejecter } from "./support.mjs";

const [packageDir, registry, token, node, siteToken] = process.argv.slice(2);
if (!siteToken) {
  console.error("usage: package.mjs PACKAGE_DIR REGISTRY_URL TOKEN NODE_URL SITE_TOKEN");
  process.exit(2);
}
const { EdgeRec, EdgeRecError } = await import(pathToFileURL(join(packageDir, "edgerec.js")));
const wasm = readFileSync(join(packageDir, "edgerec_ranker_bg.wasm"));
const rejects = rejecter(EdgeRecError);

// The registry and the node serve the same verified bundle to the same visitor, and rank alike. From the node, the
// visitor is an anonymous session the node issued: its id is the session's.
const key = (await (await fetch(`${registry}/v1/signing-key`, { headers: { Authorization: `Bearer ${token}` } })).json())
  .public_key;
const storage = memory();
const fromNode = await EdgeRec.connect({ node, wasm, storage, batchSize: 3, flushIntervalMs: 60_000, trustOnFirstUse: true });
const userId = fromNode.userId;
assert.match(userId, /^anon-[0-9a-f]{32}$/, "the node's anonymous visitor id");
assert.equal(JSON.parse(storage.values.get("edgerec:session")).visitor, userId);
const fromRegistry = await EdgeRec.connect({ registry: { url: registry, token }, userId, publicKey: key, wasm, storage: null });
assert.deepEqual(fromNode.model.version, fromRegistry.model.version);
assert.equal(fromNode.model.manifestDigest, fromRegistry.model.manifestDigest);
assert.ok(storage.values.get(`edgerec:key:${node}`), "the node's key was not pinned");
assert.equal(storage.values.get(`edgerec:key:${node}`), key, "the node names another key than the registry");
const items = fromNode.items();
assert.equal(items.length, fromNode.model.items);

// A man in the middle of the page's requests: a plan altered on the way is refused, and so is a signed plan older
// than a revision this page already verified (here the page's storage says it verified a later one).
/** A fetch in the middle: JSON answers from paths containing `part` are handed to `change` before the page. */
const rewriting = (part, change) => async (url, init) => {
  const response = await fetch(url, init);
  if (!String(url).includes(part) || !response.ok) return response;
  const body = await response.json();
  change(body);
  return new Response(JSON.stringify(body), { status: 200, headers: { "Content-Type": "application/json" } });
};
const tampering = (change) => rewriting("/v1/plans/", change);
const viaMiddle = (change, pageStorage = null) =>
  EdgeRec.connect({ registry: { url: registry, token }, userId, publicKey: key, wasm, storage: pageStorage, fetch: tampering(change) });
for (const [change, what] of [
  [(p) => (p.variants[0].weight += 1), "a reweighted plan"],
  [(p) => delete p.signature, "an unsigned plan"],
  [(p) => (p.revision += 1), "a plan with another revision"],
  [(p) => (p.salt = "another salt"), "a plan with another salt"],
  [(p) => p.signature.manifest_digests.reverse().push("0".repeat(64)), "a plan whose digests were changed"],
  // Two signed variants folded into one: the fields carry the other's line of the statement.
  [
    (p) => {
      const [d] = p.signature.manifest_digests;
      p.variants[0].weight = `${p.variants[0].weight} ${d}\nvariant x ${p.variants[0].model} ${p.variants[0].version} 0`;
    },
    "a plan whose fields carry other lines",
  ],
  [(p) => (p.surface = "search"), "another surface's plan"],
]) {
  await rejects(viaMiddle(change), "bad_plan_signature", what);
}
const verifiedLater = memory();
verifiedLater.setItem(`edgerec:revision:${registry}:home`, String(fromRegistry.model.planRevision + 1));
await rejects(viaMiddle(() => {}, verifiedLater), "replayed_plan", "a revision older than one verified");
const floor = memory();
const clean = await viaMiddle(() => {}, floor);
// The floor: the revision and how many revocations its signed plan listed (none here).
assert.equal(floor.getItem(`edgerec:revision:${registry}:home`), `${clean.model.planRevision}.0`);

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
// Core's one rule for ids, as the node applies it: refused before it joins the history or the queue.
for (const bad of ["a\nb", "x".repeat(257)]) {
  assert.throws(
    () => fromNode.track({ item: bad }),
    (e) => e instanceof EdgeRecError && e.kind === "invalid_event" && /item id/.test(e.message),
  );
}
assert.deepEqual(fromNode.history, items.slice(0, 4));
assert.equal(fromNode.pendingEvents, 0);
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

// Anonymous sessions: a page restarted with the same storage is the same visitor (its session renewed), another
// page is another visitor, and a session's token names its own visitor only.
const again = await EdgeRec.connect({ node, wasm, storage, flushIntervalMs: 60_000, trustOnFirstUse: true });
assert.equal(again.userId, userId, "a renewed session keeps the visitor id");
const stranger = await EdgeRec.connect({ node, wasm, storage: memory(), trustOnFirstUse: true });
assert.notEqual(stranger.userId, userId);
const session = JSON.parse(storage.values.get("edgerec:session"));
const forged = await fetch(`${node}/v1/events`, {
  method: "POST",
  headers: { "Content-Type": "application/json", Authorization: `Bearer ${session.token}` },
  body: JSON.stringify({ events: [{ id: "forged-1", user: stranger.userId, item: items[1], kind: "purchase", time_ms: Date.now() }] }),
});
assert.equal(forged.status, 403, "a session token posting for another visitor");
assert.equal((await forged.json()).error.kind, "forbidden");
const anonymous = await fetch(`${node}/v1/recommend`, {
  method: "POST",
  headers: { "Content-Type": "application/json" },
  body: JSON.stringify({ user_id: userId, k: 3, surface: "home" }),
});
assert.equal(anonymous.status, 401, "naming a visitor without their token");

// The site's own visitor tokens: the id is the token's subject; a userId that is not it is refused.
const siteSub = JSON.parse(Buffer.from(siteToken.split(".")[1], "base64url")).sub;
let asked = 0;
const provider = async () => {
  asked += 1;
  return siteToken;
};
const signedIn = await EdgeRec.connect({ node, visitorToken: provider, wasm, storage: memory(), flushIntervalMs: 60_000, trustOnFirstUse: true });
assert.equal(signedIn.userId, siteSub);
signedIn.track({ item: items[2] });
assert.deepEqual(await signedIn.flush(), { sent: 1 });
assert.equal((await signedIn.recommendOnNode({ k: 3 })).items.length, 3);
assert.equal(asked, 1, "a token with time left is reused");
await rejects(
  EdgeRec.connect({ node, visitorToken: provider, userId: "someone-else", wasm, storage: null, trustOnFirstUse: true }),
  "invalid_token",
  "userId not the token's subject",
);
await rejects(
  EdgeRec.connect({ node, visitorToken: async () => "not-a-jwt", wasm, storage: null, trustOnFirstUse: true }),
  "invalid_token",
  "a provider returning garbage",
);

// The registry alone gives no node to send events to: the history is kept, nothing is queued.
fromRegistry.track({ item: items[9] });
assert.equal(fromRegistry.pendingEvents, 0);
fromRegistry.clearHistory();

// Same history → same top-k on the device (either source) and on the node.
for (const item of fromNode.history) fromRegistry.track({ item });
const device = fromNode.recommend({ k: 10 });
const viaRegistry = fromRegistry.recommend({ k: 10 });
assert.throws(
  () => fromNode.recommend({ k: 10, exclude: ["a\u0000b"] }),
  (e) => e.kind === "invalid_request" && /item id holds a control character/.test(e.message),
);
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
const privateRec = await EdgeRec.connect({ node, privacy: "local", wasm, storage: memory(), fetch: watching, trustOnFirstUse: true });
const loads = requests.length;
privateRec.track({ item: items[0] });
assert.deepEqual(privateRec.history, [items[0]]);
assert.deepEqual(await privateRec.flush(), { sent: 0 });
await rejects(privateRec.recommendOnNode({ k: 5 }), "privacy", "private recommendOnNode");
assert.equal(requests.length, loads, `private mode sent ${requests.slice(loads)}`);
assert.ok(requests.every((r) => r.startsWith("GET ")), `${requests}`);

// Refusals: another key, a pinned key that changed, a record naming another version than its signed manifest, an
// unknown surface, bad options.
const relabel = rewriting("/v1/models/", (record) => (record.version = "99.0.0"));
await rejects(EdgeRec.connect({ node, wasm, storage: null, fetch: relabel, trustOnFirstUse: true }), "record_mismatch", "relabelled record");
await rejects(EdgeRec.connect({ node, wasm, storage: null, maxHistory: 501, trustOnFirstUse: true }), "invalid_options", "maxHistory");
// Another key: the plan is the first thing checked with it.
const otherKey = "11".repeat(32);
await rejects(EdgeRec.connect({ node, publicKey: otherKey, wasm, storage: null }), "bad_plan_signature", "wrong key");
const pinned = memory();
pinned.setItem(`edgerec:key:${node}`, otherKey);
await rejects(EdgeRec.connect({ node, wasm, storage: pinned, trustOnFirstUse: true }), "bad_plan_signature", "changed key");
const forgedRecord = rewriting("/v1/models/", (record) => {
  record.signature = `${record.signature.slice(0, -2)}${record.signature.endsWith("00") ? "11" : "00"}`;
});
await rejects(EdgeRec.connect({ node, wasm, storage: null, fetch: forgedRecord, trustOnFirstUse: true }), "bad_signature", "a forged record signature");
await rejects(EdgeRec.connect({ node, surface: "nowhere", wasm, storage: null, trustOnFirstUse: true }), "unknown_surface", "surface");
await rejects(EdgeRec.connect({ wasm, trustOnFirstUse: true }), "invalid_options", "no source");
await rejects(EdgeRec.connect({ node, wasm, storage: null }), "invalid_options", "neither a key nor trust on first use");
await rejects(EdgeRec.connect({ registry: { url: registry }, wasm, storage: null, trustOnFirstUse: true }), "unauthenticated", "registry without token");

// Offline once loaded: a fresh page state whose source is unreachable restarts from the saved plan and cache.
// Node has no Cache API, so the bundle files cannot come back offline here: a clear refusal, not a hang.
const offlineStorage = memory();
await EdgeRec.connect({ node, wasm, storage: offlineStorage, trustOnFirstUse: true });
const unreachable = () => Promise.reject(new TypeError("fetch failed"));
await rejects(EdgeRec.connect({ node, wasm, storage: offlineStorage, fetch: unreachable, trustOnFirstUse: true }), "network", "offline");

console.log(JSON.stringify({ ok: true, version: fromNode.model.version, items: items.length }));
