// Shared by e2e.mjs and bench.mjs: Debian's Chromium through playwright-core, and the demo page's readiness.

import { createRequire } from "node:module";
import { join } from "node:path";

/** Headless Chromium as root needs --no-sandbox; no virtual time, so performance.now() in the page is real. */
export async function launchChromium() {
  const tools = process.env.EDGEREC_PLAYWRIGHT;
  if (!tools) {
    throw new Error("EDGEREC_PLAYWRIGHT is not set: run scripts/setup.sh, which installs playwright-core and Chromium");
  }
  const { chromium } = createRequire(join(tools, "package.json"))("playwright-core");
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}

/** Waits until the page has shown recommendations (or its error). */
export const ready = (page, timeout = 60_000) =>
  page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout });

/** The recommended item ids on screen, best first. */
export const shown = (page) => page.$$eval("#recs button[data-item]", (buttons) => buttons.map((b) => b.dataset.item));

/** Clicks recommended `item` (the first one when absent) and waits until the page has ranked again. */
export async function pick(page, item) {
  const renders = await page.evaluate(() => Number(document.body.dataset.renders));
  await page.click(item === undefined ? "#recs button[data-item]" : `#recs button[data-item="${item}"]`);
  await page.waitForFunction(
    (n) => Number(document.body.dataset.renders) > n && document.body.dataset.state === "ready",
    renders,
  );
}

/** `--name value` from the command line, or `fallback`. */
export function option(args, name, fallback) {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : fallback;
}
