// Times the browser build of the ranker under Node on the requests `edgerec bench rank` wrote, the same way the
// native runtimes are timed: warm-up, then one ranking at a time. Prints {"full": [µs...], "candidates": [µs...]}.
//
// usage: node bench.mjs <edgerec_ranker.js> <bundle dir> <requests.json> <iterations>
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { pathToFileURL } from "node:url";
import { performance } from "node:perf_hooks";

const [packageJs, bundleDir, requestsFile, iterationsText] = process.argv.slice(2);
const iterations = Number(iterationsText);
const ranker = await import(pathToFileURL(packageJs).href);
ranker.initSync({ module: readFileSync(join(dirname(packageJs), "edgerec_ranker_bg.wasm")) });
const r = ranker.Ranker.load(
  readFileSync(join(bundleDir, "manifest.json")),
  readFileSync(join(bundleDir, "model.onnx")),
);

const toOptions = (q) => {
  const o = { k: q.k, recentItems: q.recent_items, exclude: q.exclude };
  if (q.candidates != null) o.candidates = q.candidates;
  return o;
};
const requests = JSON.parse(readFileSync(requestsFile, "utf8"));

function time(list) {
  const options = list.map(toOptions);
  for (let i = 0; i < Math.floor(iterations / 10) + 1; i++) r.recommend(options[i % options.length]);
  const micros = [];
  for (let i = 0; i < iterations; i++) {
    const start = performance.now();
    r.recommend(options[i % options.length]);
    micros.push((performance.now() - start) * 1000);
  }
  return micros;
}

process.stdout.write(JSON.stringify({ full: time(requests.full), candidates: time(requests.candidates) }));
