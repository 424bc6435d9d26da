// Runs the golden cases through the browser build of the ranker (wasm-bindgen, --target web) under Node, and
// tries each kind of bad input. Prints one JSON report on stdout for the Rust conformance test to check.
//
// usage: node conformance.mjs <path/to/edgerec_ranker.js> <testdata/golden>
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { pathToFileURL } from "node:url";

const [packageJs, goldenDir] = process.argv.slice(2);
if (!packageJs || !goldenDir) {
  console.error("usage: node conformance.mjs <edgerec_ranker.js> <golden dir>");
  process.exit(2);
}
const ranker = await import(pathToFileURL(packageJs).href);
ranker.initSync({ module: readFileSync(join(dirname(packageJs), "edgerec_ranker_bg.wasm")) });

const manifest = readFileSync(join(goldenDir, "bundle", "manifest.json"));
const model = readFileSync(join(goldenDir, "bundle", "model.onnx"));
const cases = JSON.parse(readFileSync(join(goldenDir, "cases.json"), "utf8"));

// The golden requests are written in the JSON API's snake_case; the browser API takes camelCase options.
function options(request) {
  const o = { k: request.k, recentItems: request.recent_items ?? [], exclude: request.exclude ?? [] };
  if (request.candidates != null) o.candidates = request.candidates;
  if (request.context) o.context = request.context;
  if (request.exclude_seen === false) o.excludeSeen = false;
  return o;
}

const r = ranker.Ranker.load(manifest, model);
const report = { cases: [], errors: [] };
for (const c of cases) {
  report.cases.push({ name: c.name, ranking: { items: r.recommend(options(c.request)) } });
}

function expectError(check, thunk) {
  try {
    thunk();
    report.errors.push({ check, kind: "no error" });
  } catch (e) {
    report.errors.push({ check, kind: e.kind ?? `untyped error: ${e}` });
  }
}
const tampered = Uint8Array.from(model);
tampered[1000] ^= 0xff;
expectError("tampered model", () => ranker.Ranker.load(manifest, tampered));
expectError("truncated model", () => ranker.Ranker.load(manifest, model.subarray(0, model.length - 1)));
{
  // Digests right, but the specification says the model takes 40 recent items; it takes 50.
  const spec = JSON.parse(new TextDecoder().decode(manifest));
  spec.feature_spec.sequence.max_len = 40;
  const mismatched = new TextEncoder().encode(JSON.stringify(spec));
  expectError("model that does not match its spec", () => ranker.Ranker.load(mismatched, model));
}
expectError("manifest that is not JSON", () => ranker.Ranker.load(new TextEncoder().encode("{"), model));
expectError("k = 0", () => r.recommend({ k: 0 }));
expectError("unknown candidate", () => r.recommend({ k: 3, candidates: ["no-such-item"] }));
expectError("misspelt option", () => r.recommend({ k: 3, recent_items: ["m1"] }));
expectError("options that are not an object", () => r.recommend(undefined));
expectError("context out of range", () => r.recommend({ k: 3, context: { hour: 24 } }));

process.stdout.write(JSON.stringify(report));
