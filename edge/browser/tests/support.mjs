// What the browser package's test scripts share: a page storage in memory, and a check that a promise fails with
// an EdgeRecError of a given kind.

import assert from "node:assert/strict";

/** `localStorage` in memory; `values` is the map behind it. */
export function memory() {
  const values = new Map();
  return {
    values,
    getItem: (k) => (values.has(k) ? values.get(k) : null),
    setItem: (k, v) => values.set(k, String(v)),
    removeItem: (k) => values.delete(k),
  };
}

/** `rejects(promise, kind, what)` for the package's `EdgeRecError`: the error, or a failed assertion. */
export function rejecter(EdgeRecError) {
  return async (promise, kind, what) => {
    try {
      await promise;
    } catch (error) {
      assert.ok(error instanceof EdgeRecError, `${what}: ${error}`);
      assert.equal(error.kind, kind, `${what}: ${error.message}`);
      return error;
    }
    assert.fail(`${what}: no error`);
  };
}
