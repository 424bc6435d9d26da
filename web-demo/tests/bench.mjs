// Browser figures of the web demo in headless Chromium (no virtual time, so performance.now() is real):
//   node web-demo/tests/bench.mjs http://127.0.0.1:8080 [--loads 5] [--clicks 100]
// Cold start = navigation to the first recommendations on screen, each load in a fresh profile (nothing cached);
// warm start = the same page loaded again with the browser's caches. Ranking per click = the ranker's time inside
// the page for one on-device re-ranking. Needs EDGEREC_PLAYWRIGHT and CHROMIUM, as e2e.mjs.

import { launchChromium, option, pick, ready } from "./chromium.mjs";

const args = process.argv.slice(2);
const base = args[0] ?? "http://127.0.0.1:8080";
const loads = Number(option(args, "--loads", "5"));
const clicks = Number(option(args, "--clicks", "100"));
const browser = await launchChromium();
const sorted = (values) => [...values].sort((a, b) => a - b);
const quantile = (values, q) => sorted(values)[Math.min(values.length - 1, Math.floor(q * values.length))];

const cold = [];
const warm = [];
let bytes = null;
let rank = [];
try {
  for (let i = 0; i < loads; i += 1) {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(base, { waitUntil: "commit" });
    await ready(page);
    cold.push(await page.evaluate(() => window.edgerecDemo.coldMs));
    if (i === 0) {
      bytes = await page.evaluate(() => {
        const sum = (match) =>
          performance
            .getEntriesByType("resource")
            .filter((e) => match(new URL(e.name).pathname))
            .reduce((total, e) => total + e.transferSize, 0);
        return {
          wasm: sum((p) => p.endsWith(".wasm")),
          bundle: sum((p) => p.startsWith("/v1/blobs/")),
          scripts: sum((p) => p.startsWith("/pkg/") && p.endsWith(".js")),
          catalogue: sum((p) => p.startsWith("/v1/catalogue/")),
        };
      });
    }
    await page.goto(base, { waitUntil: "commit" });
    await ready(page);
    warm.push(await page.evaluate(() => window.edgerecDemo.coldMs));
    if (i === loads - 1) {
      // Rank-only: privacy mode, so no node comparison runs between clicks.
      await page.evaluate(() => localStorage.setItem("edgerec-demo:privacy", "local"));
      await page.reload();
      await ready(page);
      for (let c = 0; c < clicks; c += 1) {
        await pick(page);
      }
      rank = await page.evaluate(() => window.edgerecDemo.deviceTimes.slice(1));
    }
    await context.close();
  }
} finally {
  await browser.close();
}
const ms = (v) => `${v.toFixed(v < 10 ? 2 : 0)} ms`;
const mb = (v) => `${(v / 1e6).toFixed(2)} MB`;
console.log(`cold start (fresh profile), ${loads} loads: median ${ms(quantile(cold, 0.5))}, max ${ms(Math.max(...cold))}`);
console.log(`warm start (cached), ${loads} loads: median ${ms(quantile(warm, 0.5))}, max ${ms(Math.max(...warm))}`);
console.log(`ranking per click, ${rank.length} clicks: median ${ms(quantile(rank, 0.5))}, p95 ${ms(quantile(rank, 0.95))}, max ${ms(Math.max(...rank))}`);
console.log(`downloaded on a cold load: Wasm ${mb(bytes.wasm)}, bundle ${mb(bytes.bundle)}, scripts ${mb(bytes.scripts)}, catalogue ${mb(bytes.catalogue)}`);
console.log(JSON.stringify({ cold, warm, rank, bytes }));
