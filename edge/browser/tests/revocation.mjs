// The browser package (edgerec.js) under Node, against a registry whose plan of `home` (control 1.0.0 and
// candidate 3.0.0, 50/50) has revocations:
//   node edge/browser/tests/revocation.mjs PACKAGE_DIR REGISTRY_URL TOKEN PUBLIC_KEY PHASE STALE_PLAN
// PHASE `one`: the candidate's version is revoked. Every visitor is served by control, those whose own variant was
// the candidate flagged; the signed answer from before the revocation (STALE_PLAN, a JSON file), replayed, is
// refused, and so is a plan whose revocations were taken off. Prints each visitor's revoked variant, for the
// caller to compare with the edge node's answers. PHASE `all`: both versions are revoked; nothing ranks on the
// device, and a page that had a model drops it. Every check throws on failure.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

import { memory, rejecter } from "./support.mjs";

const [packageDir, registry, token, publicKey, phase, stalePlanFile] = process.argv.slice(2);
if (!stalePlanFile || !["one", "all"].includes(phase)) {
  console.error("usage: revocation.mjs PACKAGE_DIR REGISTRY_URL TOKEN PUBLIC_KEY one|all STALE_PLAN");
  process.exit(2);
}
const { EdgeRec, EdgeRecError } = await import(pathToFileURL(join(packageDir, "edgerec.js")));
const wasm = readFileSync(join(packageDir, "edgerec_ranker_bg.wasm"));
const stalePlan = readFileSync(stalePlanFile, "utf8");
const rejects = rejecter(EdgeRecError);
/** A fetch in the middle: plan answers are replaced by `answer(plan)`. */
const plansAnswered = (answer) => async (url, init) => {
  const response = await fetch(url, init);
  if (!String(url).includes("/v1/plans/") || !response.ok) return response;
  const body = JSON.stringify(answer(await response.json()));
  return new Response(body, { status: 200, headers: { "Content-Type": "application/json" } });
};
const connect = (userId, options = {}) =>
  EdgeRec.connect({ registry: { url: registry, token }, userId, publicKey, wasm, storage: memory(), ...options });

if (phase === "one") {
  const revokedVariant = {};
  for (let n = 0; n < 40; n += 1) {
    const userId = `visitor-${n}`;
    const page = await connect(userId);
    assert.equal(page.model.variant, "control", userId);
    assert.equal(page.model.version, "1.0.0", userId);
    const answer = page.recommend({ k: 3 });
    if (page.model.revokedVariant) {
      assert.equal(page.model.revokedVariant, "candidate", userId);
      assert.deepEqual(
        [answer.degraded?.reason, answer.degraded?.fallback],
        ["revoked", "other_variant"],
        `${userId}: ${JSON.stringify(answer)}`,
      );
    } else {
      assert.equal(answer.degraded, undefined, userId);
    }
    revokedVariant[userId] = page.model.revokedVariant ?? null;
  }
  // A page that saw the revocation never goes back to the answer from before it, at the same revision.
  const storage = memory();
  await connect("visitor-0", { storage });
  await rejects(
    connect("visitor-0", { storage, fetch: plansAnswered(() => JSON.parse(stalePlan)) }),
    "replayed_plan",
    "the answer from before the revocation",
  );
  // Revocations taken off on the way: the signature no longer verifies.
  const unrevoked = (plan) => {
    plan.signature.revoked = [];
    return plan;
  };
  await rejects(connect("visitor-0", { fetch: plansAnswered(unrevoked) }), "bad_plan_signature", "revocations stripped");
  console.log(JSON.stringify({ ok: true, revoked_variant: revokedVariant }));
} else {
  // A page loaded from the answer from before the revocations (as a cache or a proxy kept it) ...
  let replaying = true;
  const stale = plansAnswered(() => JSON.parse(stalePlan));
  const page = await connect("visitor-0", { fetch: (url, init) => (replaying ? stale : fetch)(url, init) });
  assert.ok(["1.0.0", "3.0.0"].includes(page.model.version), page.model.version);
  // ... reloads from the registry: every variant revoked, the model is dropped and nothing ranks.
  replaying = false;
  await rejects(page.reload(), "revoked", "reload with every variant revoked");
  assert.throws(() => page.recommend({ k: 3 }), (e) => e instanceof EdgeRecError && e.kind === "revoked");
  await rejects(connect("visitor-1"), "revoked", "a new page with every variant revoked");
  console.log(JSON.stringify({ ok: true }));
}
