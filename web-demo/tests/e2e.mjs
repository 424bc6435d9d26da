// The web demo in headless Chromium, against a running `edgerec demo` (or `edgerec edge serve --web-demo web-demo --anonymous-sessions`):
//   node web-demo/tests/e2e.mjs http://127.0.0.1:8080 [--screenshots DIR] [--clicks N]
// Needs EDGEREC_PLAYWRIGHT (a folder with node_modules/playwright-core) and CHROMIUM (the browser binary);
// scripts/setup.sh installs both. Every check throws on failure; the figures are printed as one JSON line last.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { launchChromium, option, pick, ready, shown } from "./chromium.mjs";

const args = process.argv.slice(2);
const base = args[0];
const screenshots = option(args, "--screenshots", null);
const clicks = Number(option(args, "--clicks", "5"));
if (!base) {
  console.error("usage: e2e.mjs BASE_URL [--screenshots DIR] [--clicks N]");
  process.exit(2);
}
const log = (...parts) => console.error("[e2e]", ...parts);
// Each context below is a fresh profile: nothing cached, nothing stored.
const browser = await launchChromium();
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const figures = {};

try {
  // 1. Cold load: page, package, Wasm and bundle fetched for the first time in a fresh profile.
  const page = await context.newPage();
  const consoleErrors = [];
  page.on("pageerror", (error) => consoleErrors.push(error.message));
  const navigationStarted = Date.now();
  await page.goto(base, { waitUntil: "commit" });
  await ready(page);
  const error = await page.evaluate(() => window.edgerecDemo.error);
  assert.equal(error, undefined, `the page failed to load its model: ${JSON.stringify(error)}`);
  figures.first_recommendations_ms = await page.evaluate(() => window.edgerecDemo.coldMs);
  figures.first_recommendations_wall_ms = Date.now() - navigationStarted;
  figures.downloaded = await page.evaluate(() =>
    performance
      .getEntriesByType("resource")
      .filter((e) => e.name.endsWith(".wasm") || e.name.includes("/v1/blobs/") || e.name.endsWith(".js"))
      .map((e) => ({ name: new URL(e.name).pathname, transfer: e.transferSize, decoded: e.decodedBodySize })),
  );
  log(`first recommendations ${figures.first_recommendations_ms.toFixed(0)} ms after navigation`);
  let before = await shown(page);
  assert.ok(before.length > 0, "no recommendations on first load");
  assert.match(await page.textContent("#f-verified"), /^verified ✓/);

  // 2. Clicks: each pick re-ranks on the device, and the edge node agrees on the same history.
  const rankTimes = [];
  for (let i = 0; i < clicks; i += 1) {
    const target = before[i % before.length];
    await pick(page, target);
    const after = await shown(page);
    const { last, agreement } = await page.evaluate(() => ({
      last: window.edgerecDemo.last,
      agreement: window.edgerecDemo.agreement,
    }));
    assert.equal(last.where, "device");
    rankTimes.push(last.rankMs);
    assert.ok(!after.includes(target), `the picked item ${target} is still recommended`);
    // More than the picked item taken out: the list was ranked again for the new history.
    const unranked = before.filter((item) => item !== target);
    assert.notDeepEqual(after.slice(0, unranked.length), unranked, `click ${i + 1} on ${target} did not re-rank`);
    assert.ok(agreement?.same, `device and node top-k differ after click ${i + 1}: ${JSON.stringify(agreement)}`);
    before = after;
  }
  const history = await page.evaluate(() => window.edgerec.history);
  assert.equal(history.length, clicks, `history ${JSON.stringify(history)}`);
  rankTimes.sort((a, b) => a - b);
  figures.rank_ms_per_click = { median: rankTimes[Math.floor(rankTimes.length / 2)], max: rankTimes.at(-1), clicks };
  log(`ranking per click: median ${figures.rank_ms_per_click.median.toFixed(2)} ms, max ${figures.rank_ms_per_click.max.toFixed(2)} ms`);

  // 3. The toggle: the edge node ranks the same history into the same list.
  const onDevice = await shown(page);
  await page.click("#mode-node");
  await page.waitForFunction(() => window.edgerecDemo.last.where === "node" && document.body.dataset.state === "ready");
  assert.deepEqual(await shown(page), onDevice, "the edge node's list differs from the device's");
  await page.click("#mode-device");
  await page.waitForFunction(() => window.edgerecDemo.last.where === "device");

  // 4. Events reach the node in batches.
  await page.evaluate(() => window.edgerec.flush());
  assert.equal(await page.evaluate(() => window.edgerec.pendingEvents), 0, "events still waiting after flush");
  figures.events_sent = await page.evaluate(() => window.edgerecDemo.sent);
  assert.equal(figures.events_sent, clicks);

  if (screenshots) {
    await page.screenshot({ path: join(screenshots, "web-demo-desktop.png"), fullPage: false });
  }

  // 5. Offline once loaded: ranking still works with the network gone, and the package restarts from its saved plan
  // and the bundle files it cached (verified again).
  await context.setOffline(true);
  const offlineBefore = await shown(page);
  await pick(page, offlineBefore[0]);
  assert.ok(!(await shown(page)).includes(offlineBefore[0]), "no re-ranking offline");
  const restarted = await page.evaluate(async () => {
    await window.edgerec.reload();
    return { model: window.edgerec.model, items: window.edgerec.recommend({ k: 5 }).items.length };
  });
  assert.equal(restarted.model.offline, true, JSON.stringify(restarted));
  assert.equal(restarted.items, 5);
  await context.setOffline(false);
  assert.deepEqual(consoleErrors, [], "errors thrown in the page");

  // 6. Phone width: the layout fits without sideways scrolling.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone screen`);
  if (screenshots) {
    await page.screenshot({ path: join(screenshots, "web-demo-phone.png"), fullPage: false });
  }
  await page.close();

  // 7. Private mode: nothing about the visitor is sent.
  const isolated = await browser.newContext();
  const privatePage = await isolated.newPage();
  const sent = [];
  privatePage.on("request", (request) => {
    if (request.method() === "POST") sent.push(request.url());
  });
  await privatePage.addInitScript(() => localStorage.setItem("edgerec-demo:privacy", "local"));
  await privatePage.goto(base);
  await ready(privatePage);
  const privateList = await shown(privatePage);
  await pick(privatePage, privateList[0]);
  const queued = await privatePage.evaluate(async () => ({
    flushed: await window.edgerec.flush(),
    pending: window.edgerec.pendingEvents,
    stored: JSON.parse(localStorage.getItem("edgerec:queue") ?? "[]").length,
    history: window.edgerec.history.length,
  }));
  assert.deepEqual(queued, { flushed: { sent: 0 }, pending: 0, stored: 0, history: 1 });
  assert.deepEqual(sent, [], "the private mode sent requests");
  assert.ok(!(await shown(privatePage)).includes(privateList[0]));
  await isolated.close();

  // 8. A tampered bundle is refused, visibly: one byte of the model changed in transit; a forged signature; a
  // changed model served under a record rewritten to its digest (the signed manifest still names the original).
  const plan = await (await fetch(`${base}/v1/plans/home`)).json();
  const { model: name, version } = plan.variants[0];
  const record = await (await fetch(`${base}/v1/models/${name}/versions/${version}`)).json();
  const original = Buffer.from(await (await fetch(`${base}/v1/blobs/${record.files["model.onnx"]}`)).arrayBuffer());
  const changed = Buffer.from(original);
  changed[changed.length >> 1] ^= 0x01;
  const changedDigest = createHash("sha256").update(changed).digest("hex");
  const flipByte = (body) => {
    // The ONNX file, not the JSON manifest.
    if (body[0] === "{".charCodeAt(0)) return body;
    const copy = Buffer.from(body);
    copy[copy.length >> 1] ^= 0x01;
    return copy;
  };
  const editRecord = (edit) => (body) => {
    const parsed = JSON.parse(body.toString());
    edit(parsed);
    return Buffer.from(JSON.stringify(parsed));
  };
  for (const [what, routes, expect] of [
    ["model bytes", { "**/v1/blobs/**": flipByte }, "digest_mismatch"],
    ["signature", { "**/v1/models/**": editRecord((r) => (r.signature = (r.signature[0] === "0" ? "1" : "0") + r.signature.slice(1))) }, "bad_signature"],
    ["model and record", {
      "**/v1/models/**": editRecord((r) => (r.files["model.onnx"] = changedDigest)),
      [`**/v1/blobs/${changedDigest}`]: () => changed,
    }, "invalid_bundle"],
  ]) {
    const tampered = await browser.newContext();
    for (const [route, rewrite] of Object.entries(routes)) {
      await tampered.route(route, async (intercepted) => {
        if (intercepted.request().url().endsWith(changedDigest)) {
          await intercepted.fulfill({ status: 200, contentType: "application/octet-stream", body: rewrite() });
          return;
        }
        const response = await intercepted.fetch();
        await intercepted.fulfill({ response, body: rewrite(await response.body()) });
      });
    }
    const tamperedPage = await tampered.newPage();
    await tamperedPage.goto(base);
    await ready(tamperedPage);
    const refused = await tamperedPage.evaluate(() => window.edgerecDemo.error);
    assert.equal(refused?.kind, expect, `tampered ${what}: ${JSON.stringify(refused)}`);
    assert.ok(await tamperedPage.isVisible("#error"), `tampered ${what}: no visible message`);
    assert.match(await tamperedPage.textContent("#error"), /refused/);
    assert.equal((await shown(tamperedPage)).length, 0, `tampered ${what}: recommendations shown anyway`);
    await tampered.close();
  }

  // 9. The package folder serves its files only.
  for (const path of ["/pkg/..%2FCargo.toml", "/pkg/.built-from", "/pkg/%2E%2E%2Fweb-demo%2Findex.html"]) {
    const response = await fetch(`${base}${path}`);
    assert.equal(response.status, 404, `${path} answered ${response.status}`);
  }
  // 10. A page that pins the package with Subresource Integrity: the hash scripts/build-wasm.sh printed is the
  //     served file's and loads it; with any other hash Chromium refuses to run the package.
  const servedPackage = Buffer.from(await (await fetch(`${base}/pkg/edgerec.js`)).arrayBuffer());
  const integrity = `sha384-${createHash("sha384").update(servedPackage).digest("base64")}`;
  if (process.env.EDGEREC_WASM_DIR) {
    const printed = JSON.parse(readFileSync(join(process.env.EDGEREC_WASM_DIR, "browser", "integrity.json"), "utf8"));
    assert.equal(printed["edgerec.js"], integrity, "integrity.json names the file the node serves");
  }
  const loadsWith = async (hash) => {
    // A fresh page each time: a module URL is fetched (and checked) once per document.
    const pinned = await context.newPage();
    await pinned.goto(`${base}/healthz`);
    const outcome = await pinned.evaluate(
      (hash) =>
        new Promise((resolve) => {
          const script = document.createElement("script");
          script.type = "module";
          script.src = "/pkg/edgerec.js";
          script.integrity = hash;
          script.onload = () => resolve("loaded");
          script.onerror = () => resolve("refused");
          document.head.append(script);
        }),
      hash,
    );
    await pinned.close();
    return outcome;
  };
  assert.equal(await loadsWith(integrity), "loaded", "the package with its own hash");
  const wrong = `sha384-${createHash("sha384").update("another file").digest("base64")}`;
  assert.equal(await loadsWith(wrong), "refused", "the package with a wrong hash");

  console.log(JSON.stringify(figures));
} finally {
  await browser.close();
}
