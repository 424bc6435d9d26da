// The browser package (edgerec.js) under Node, against an edge node whose registry rotated its signing key twice:
//   node edge/browser/tests/keys.mjs PACKAGE_DIR NODE_URL FIRST_KEY
// A page given the first key follows the rotations the node relays (each signed by the key it retires) to the
// key that signed the plan and the record; a rotation altered on the way, or a key the chain does not start from,
// is refused. Every check throws on failure.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

import { rejecter } from "./support.mjs";

const [packageDir, node, firstKey] = process.argv.slice(2);
if (!firstKey) {
  console.error("usage: keys.mjs PACKAGE_DIR NODE_URL FIRST_KEY");
  process.exit(2);
}
const { EdgeRec, EdgeRecError } = await import(pathToFileURL(join(packageDir, "edgerec.js")));
const wasm = readFileSync(join(packageDir, "edgerec_ranker_bg.wasm"));
const rejects = rejecter(EdgeRecError);
/** A fetch in the middle: key documents are handed to `change` before the page sees them. */
const keyDocumentsChanged = (change) => async (url, init) => {
  const response = await fetch(url, init);
  if (!String(url).endsWith("/v1/signing-key") || !response.ok) return response;
  const body = await response.json();
  change(body);
  return new Response(JSON.stringify(body), { status: 200, headers: { "Content-Type": "application/json" } });
};

const page = await EdgeRec.connect({ node, publicKey: firstKey, wasm, storage: null });
assert.equal(page.model.version, "1.0.0");
assert.ok(page.recommend({ k: 3 }).items.length > 0);

const flip = (hex) => `${hex.slice(0, -2)}${hex.endsWith("00") ? "11" : "00"}`;
for (const [change, what] of [
  [(d) => (d.rotations[1].signature = flip(d.rotations[1].signature)), "a rotation whose signature was altered"],
  [(d) => (d.rotations[0].old_valid_until += 1), "a rotation whose grace was stretched"],
]) {
  const connecting = EdgeRec.connect({ node, publicKey: firstKey, wasm, storage: null, fetch: keyDocumentsChanged(change) });
  await rejects(connecting, "bad_plan_signature", what);
}
await rejects(
  EdgeRec.connect({ node, publicKey: "11".repeat(32), wasm, storage: null }),
  "bad_plan_signature",
  "a key the chain does not start from",
);
console.log(JSON.stringify({ ok: true }));
